"""Training arguments of the embedding-based (last-token) approach: `TrainingArguments` plus data, quantization,
LoRA, loss, early-stopping and calibration options, with the paper's defaults."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUANTIZATION_CHOICES = ("4bit", "8bit", "none")
LOSS_CHOICES = ("cross_entropy", "focal")


@dataclass
class LastTokenClassifierTrainingArguments(TrainingArguments):
    r"""
    Arguments of [`LastTokenClassifierTrainer`]. Every `TrainingArguments` field applies; the defaults below follow
    the paper (8-bit AdamW, linear schedule with warmup, effective batch 8 through gradient accumulation, up to 20
    epochs with early stopping on validation macro-F1).
    """

    # --- Data -------------------------------------------------------------------------------------------------------
    text_columns: list[str] = field(
        default_factory=lambda: ["text"],
        metadata={"help": "Column(s) holding the text. Several columns are joined by `text_template`."},
    )
    text_template: str | None = field(
        default=None,
        metadata={"help": "`str.format` template over columns, e.g. '{title}\\n\\n{abstract}'. Default: the text "
                  "columns separated by blank lines."},
    )
    label_column: str = field(
        default="label",
        metadata={"help": "Column of label names, class ids, or (multi-label) lists of names or ids."},
    )
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per example, pooling suffix included."})
    truncation_side: str = field(
        default="right", metadata={"help": "'right' keeps the start of long texts, 'left' keeps the end."}
    )
    pooling_suffix: str = field(
        default="\nLabel:",
        metadata={"help": "Text appended after truncation, so the pooled last token is always the same kind of "
                  "position rather than a word cut mid-sentence. '' disables it."},
    )
    drop_unknown_labels: bool = field(
        default=False,
        metadata={"help": "Drop evaluation rows whose labels never occur in training (and report how many), "
                  "instead of failing."},
    )

    # --- Model and quantization -------------------------------------------------------------------------------------
    quantization: str = field(
        default="none", metadata={"help": "Backbone weights: '4bit' (NF4, QLoRA), '8bit', or 'none'."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16", metadata={"help": "Compute dtype of 4-bit layers: 'bfloat16' or 'float32'."}
    )
    bnb_4bit_use_double_quant: bool = field(default=True, metadata={"help": "Quantize the 4-bit scales too."})
    pooling: str = field(default="last", metadata={"help": "'last' (last real token) or 'mean'."})
    classifier_dropout: float = field(default=0.0, metadata={"help": "Dropout before the linear head."})

    # --- LoRA -------------------------------------------------------------------------------------------------------
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters (and the head) instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the paper uses 8 and 16)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Modules given LoRA adapters: all attention and MLP projections by default."},
    )
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
        default=3, metadata={"help": "Evaluations without improvement of `metric_for_best_model` before stopping."}
    )
    calibrate: bool = field(
        default=True,
        metadata={"help": "After training, fit temperature scaling (and, multi-label, decision thresholds) on the "
                  "evaluation set and store them in the model config."},
    )
    per_class_thresholds: bool = field(
        default=True, metadata={"help": "Multi-label: tune one threshold per class rather than one global."}
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "Save the model with LoRA merged into the backbone instead of adapter + head."}
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
        for name, value, choices in (
            ("quantization", self.quantization, QUANTIZATION_CHOICES),
            ("loss", self.loss, LOSS_CHOICES),
            ("bnb_4bit_compute_dtype", self.bnb_4bit_compute_dtype, ("bfloat16", "float32", "float16")),
            ("truncation_side", self.truncation_side, ("right", "left")),
            ("pooling", self.pooling, ("last", "mean")),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}.")
        if isinstance(self.text_columns, str):
            self.text_columns = [self.text_columns]
        if not self.text_columns:
            raise ValueError("text_columns must name at least one column.")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}.")
        if self.quantization != "none" and not self.use_peft:
            raise ValueError("A quantized backbone cannot be trained directly: keep use_peft=True (QLoRA).")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"early_stopping_patience must be >= 1 or None, got {self.early_stopping_patience}.")
        super().__post_init__()
