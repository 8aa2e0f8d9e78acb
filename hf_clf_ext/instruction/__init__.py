"""The instruction-based approach: classification as prompt -> label text, fine-tuned with TRL's SFTTrainer.

    verbalizer.py      labels <-> label texts <-> in-context token ids
    logits_process.py  VerbalizerLogitsProcessor: constrained decoding, for any generate()
    scoring.py         score_labels: label probabilities from one prompt pass (shared KV cache, tree attention)
    prompt_cache.py    SharedPrefix: the prompts' common opening encoded once per call
    classifier.py      InstructionPrompt, InstructionClassifier (classify by generate or score)
    config.py          InstructionConfig (SFTConfig + data, prompt, verbalizer, LoRA)
    trainer.py         InstructionTrainer (SFTTrainer)

`hf_clf_ext.instruction` was a module until round 2: its names are importable from here as before.
"""

from .classifier import (ANSWER_CUE, DEFAULT_MULTI_LABEL_TEMPLATE, DEFAULT_TEMPLATE, HARD_LABEL_METHODS,  # noqa: F401
                         HUB_OPTIONS, METHODS, PROMPT_FILE, InstructionClassifier, InstructionPrompt)
