"""Training arguments of the embedding-based (last-token) approach: `TrainingArguments` plus data, quantization,
LoRA, loss, early-stopping and calibration options, with the paper's defaults."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..arguments import (
    DataArguments,
    LoraArguments,
    QuantizationArguments,
    SavingArguments,
    check_finite_options,
    parse_number_list,
)

LOSS_CHOICES = ("cross_entropy", "focal")
HEAD_INITS = ("random", "label_names")  # hf_clf_ext.last_token.head_init


@dataclass
class LastTokenConfig(
    DataArguments, QuantizationArguments, LoraArguments, SavingArguments, TrainingArguments
):
    r"""
    Arguments of [`LastTokenTrainer`][hf_clf_ext.last_token.trainer.LastTokenTrainer]. Every `TrainingArguments`
    field applies; the defaults below follow the paper (8-bit AdamW, linear schedule with warmup, effective batch 8
    through gradient accumulation, up to 20 epochs with early stopping on validation macro-F1).
    """

    # --- Data (plus text_columns, text_template, label_column, drop_unknown_labels) --------------------------------
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per example, pooling suffix included."})
    truncation_side: str = field(
        default="right", metadata={"help": "'right' keeps the start of long texts, 'left' keeps the end."}
    )
    pooling_suffix: str = field(
        default="\nLabel:",
        metadata={"help": "Text appended after truncation, so the pooled last token is always the same kind of "
                  "position rather than a word cut mid-sentence. '' disables it."},
    )

    # --- Model (plus quantization, bnb_4bit_compute_dtype, bnb_4bit_use_double_quant) -------------------------------
    pooling: str = field(default="last", metadata={"help": "'last' (last real token) or 'mean'."})
    classifier_dropout: float = field(default=0.0, metadata={"help": "Dropout before the linear head."})
    head_init: str = field(
        default="random",
        metadata={"help": "'random', or 'label_names': each label's row starts as the LM's output embedding of the "
                  "label name's first token, so that with a pooling suffix asking for the label training starts "
                  "from the model's zero-shot guess."},
    )

    # --- LoRA (plus use_peft, lora_alpha, lora_dropout, lora_target_modules) ----------------------------------------
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the paper uses 8 and 16)."})
    head_learning_rate: float | None = field(
        default=2e-3,
        metadata={"help": "Learning rate of the freshly initialised head (the backbone uses `learning_rate`). "
                  "A randomly initialised head needs a larger step than the adapters."},
    )

    # --- Loss -------------------------------------------------------------------------------------------------------
    loss: str = field(
        default="cross_entropy",
        metadata={"help": "'cross_entropy' (binary cross-entropy for multi-label) or 'focal'."},
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss."})
    class_weights: str | None = field(
        default=None,
        metadata={"help": "'balanced' (inverse class frequency in the training labels) or comma-separated weights "
                  "in label order; `pos_weight` for multi-label."},
    )

    # --- Early stopping and calibration -----------------------------------------------------------------------------
    early_stopping_patience: int | None = field(
        default=3, metadata={"help": "Evaluations without improvement of `metric_for_best_model` before stopping "
                                     "(only where the trainer evaluates: `eval_strategy` other than 'no')."}
    )
    calibrate: bool = field(
        default=True,
        metadata={"help": "After training, fit temperature scaling (and, multi-label, decision thresholds) on the "
                  "evaluation set and store them in the model config."},
    )
    per_class_thresholds: bool = field(
        default=True, metadata={"help": "Multi-label: tune one threshold per class rather than one global."}
    )
    head_bias: bool = field(
        default=False,
        metadata={"help": "Give the linear head a bias. Stock `*ForSequenceClassification` heads have none, so the "
                  "default bias-free head exports to the stock architecture (and vLLM) exactly."},
    )

    # --- Paper defaults for inherited fields ------------------------------------------------------------------------
    learning_rate: float = field(default=2e-4, metadata={"help": "Learning rate of the LoRA adapters."})
    num_train_epochs: float = field(default=20, metadata={"help": "Upper bound; early stopping usually ends sooner."})
    per_device_train_batch_size: int = field(default=2, metadata={"help": "Batch per device (x accumulation = 8)."})
    gradient_accumulation_steps: int = field(default=4, metadata={"help": "Steps accumulated per optimizer step."})
    optim: str = field(default="adamw_8bit", metadata={"help": "8-bit AdamW (bitsandbytes), as in the paper."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Linear decay after warmup."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a fraction of training if < 1."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate every epoch (early stopping needs it)."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "End with the best checkpoint's weights."})
    metric_for_best_model: str | None = field(default="f1_macro", metadata={"help": "Validation metric to select."})

    def __post_init__(self):
        check_finite_options(self)
        self.class_weight_values()  # a bad list fails here, before a model loads
        self.check_data_arguments()
        self.check_quantization_arguments()
        self.check_lora_arguments(self.quantization)
        for name, value, choices in (
            ("loss", self.loss, LOSS_CHOICES),
            ("truncation_side", self.truncation_side, ("right", "left")),
            ("pooling", self.pooling, ("last", "mean")),
            ("head_init", self.head_init, HEAD_INITS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
        if self.head_init == "label_names" and self.pooling == "mean":
            raise ValueError("head_init='label_names' starts the head from the LM's next-token guess, read at the "
                             "last token; pooling='mean' averages every token's state, which is no such guess: use "
                             "pooling='last' or head_init='random'.")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 or None, got {self.early_stopping_patience}.")
        super().__post_init__()

    def class_weight_values(self) -> list[float] | None:
        """Explicit `class_weights` as numbers (None for none or 'balanced', which needs the training labels)."""
        if self.class_weights is None or self.class_weights == "balanced":
            return None
        return parse_number_list("class_weights", self.class_weights)
