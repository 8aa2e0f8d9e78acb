"""Fine-tune a causal LM to answer a classification prompt with its label (the instruction-based approach, TRL SFT).

    python recipes/train_instruction.py --config recipes/configs/smollm2_135m_bbc_instruction.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/train_instruction.py --config ...

Any key of the config can be overridden on the command line: `--num_train_epochs 3 --output_dir outputs/run2`.
Checks run before any model loads; then train -> evaluate by constrained decoding and label scoring -> save the
adapter, tokenizer, verbalizer, prompt and card -> push when `push_to_hub: true`.
"""

from hf_clf_ext.scripts.train_instruction import main

if __name__ == "__main__":
    main()
