"""Training configuration of the instruction-based approach: TRL's `SFTConfig` plus data, prompt, verbalizer,
quantization and LoRA options, with the paper's defaults."""

import json
import warnings
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from ..arguments import DataArguments, LoraArguments, QuantizationArguments, SavingArguments, check_finite_options
from .classifier import METHODS as EVAL_METHODS


@dataclass
class InstructionConfig(DataArguments, QuantizationArguments, LoraArguments, SavingArguments, SFTConfig):
    r"""
    Arguments of [`InstructionTrainer`][hf_clf_ext.instruction.trainer.InstructionTrainer]. Every `SFTConfig`
    field applies; the defaults follow the paper (LoRA r=64 on all projections, paged AdamW 32-bit, cosine schedule, 5
    epochs, effective batch 8). `max_length` bounds prompt + answer: texts are cut, answers never.
    """

    # --- Prompt and verbalizer --------------------------------------------------------------------------------------
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Template with {text} (and optionally {labels}, {delimiter}). Default: an instruction "
                  "listing the labels."},
    )
    use_chat_template: bool | None = field(
        default=None, metadata={"help": "Wrap prompts with the tokenizer's chat template (default: when it has one)."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message (chat templates only)."})
    label_texts: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "What the model writes for each label, as a dict or JSON object; default: the names."},
    )
    delimiter: str = field(default=", ", metadata={"help": "Separator of labels in multi-label answers."})
    max_labels: int | None = field(default=None, metadata={"help": "Multi-label: at most this many labels."})

    # --- Evaluation -------------------------------------------------------------------------------------------------
    eval_methods: list[str] = field(
        default_factory=lambda: list(EVAL_METHODS),
        metadata={"help": "How evaluation classifies: constrained 'generate' and/or label 'score' (probabilities)."},
    )
    per_class_thresholds: bool = field(
        default=True,
        metadata={"help": "Multi-label label scoring: after training, tune one decision threshold per class (else one "
                  "global) on the evaluation set (when 'score' is among eval_methods)."},
    )

    # --- Paper defaults for inherited fields ------------------------------------------------------------------------
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (the paper uses 64 for this approach)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the LoRA adapters."})
    num_train_epochs: float = field(default=5, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Batch per device (x accumulation = 8)."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Steps accumulated per optimizer step."})
    optim: str = field(default="paged_adamw_32bit", metadata={"help": "Paged AdamW 32-bit, as in the paper."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Cosine decay."})
    warmup_steps: float = field(default=0.03, metadata={"help": "Warmup steps, or a fraction of training if < 1."})
    max_length: int | None = field(default=1024, metadata={"help": "Prompt + answer tokens; texts are cut to fit."})
    completion_only_loss: bool | None = field(default=True, metadata={"help": "Loss on the answer tokens only."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory (turn it on for large models), "
                  "much slower steps (SFTConfig turns it on by default; on CPU it costs over 20x)."},
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision; default: on when a bf16-capable GPU is present."}
    )

    def __post_init__(self):
        check_finite_options(self)
        self.check_data_arguments()
        self.check_quantization_arguments()
        self.check_lora_arguments(self.quantization)
        if isinstance(self.label_texts, str):
            self.label_texts = json.loads(self.label_texts)
        if not self.eval_methods:
            raise ValueError(f"eval_methods names no method: give at least one of {EVAL_METHODS}.")
        unknown = set(self.eval_methods) - set(EVAL_METHODS)
        if unknown:
            raise ValueError(f"eval_methods must be among {EVAL_METHODS}, got {sorted(unknown)}.")
        self.metric_for_best_model = suffixed_metric_name(self.metric_for_best_model)
        if self.bf16 is None:
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not self.use_cpu
        super().__post_init__()


def suffixed_metric_name(name: str | None) -> str | None:
    """Round 2 keyed metrics `<method>_<metric>` (`generate_f1_macro`); they are `<metric>_<method>` now, as every
    result key with a method: an old name in `metric_for_best_model` is rewritten, with a warning."""
    if not name:
        return name
    prefix = "eval_" if name.startswith("eval_") else ""
    method, _, metric = name.removeprefix(prefix).partition("_")
    if method not in EVAL_METHODS or not metric:
        return name
    new = f"{prefix}{metric}_{method}"
    warnings.warn(f"metric_for_best_model={name!r} is the old key order; it names {new!r} now.", FutureWarning,
                  stacklevel=3)
    return new
