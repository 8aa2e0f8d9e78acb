"""Argument groups shared by both approaches' training configs (data, quantization, LoRA, saving), as dataclass
mixins."""

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
from transformers import BitsAndBytesConfig

from .sharding import shards_parameters

DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
QUANTIZATION_CHOICES = ("4bit", "8bit", "none")
logger = logging.getLogger(__name__)


@dataclass
class DataArguments:
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
    drop_unknown_labels: bool = field(
        default=False,
        metadata={"help": "Drop evaluation rows whose labels never occur in training (and report how many), "
                  "instead of failing."},
    )

    def check_data_arguments(self) -> None:
        if isinstance(self.text_columns, str):
            self.text_columns = [self.text_columns]
        if not self.text_columns:
            raise ValueError("text_columns must name at least one column.")


@dataclass
class QuantizationArguments:
    quantization: str = field(
        default="none", metadata={"help": "Backbone weights: '4bit' (NF4, QLoRA), '8bit', or 'none'."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16", metadata={"help": "Compute dtype of 4-bit layers: 'bfloat16', 'float16' or 'float32'."}
    )
    bnb_4bit_use_double_quant: bool = field(default=True, metadata={"help": "Quantize the 4-bit scales too."})
    bnb_4bit_quant_storage: str | None = field(
        default=None,
        metadata={"help": "dtype that stores the packed 4-bit weights; 'bfloat16' lets FSDP shard them "
                  "(QLoRA + FSDP)."},
    )

    def check_quantization_arguments(self) -> None:
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ValueError(f"quantization must be one of {QUANTIZATION_CHOICES}, got {self.quantization!r}.")
        if self.bnb_4bit_compute_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError("bnb_4bit_compute_dtype must be bfloat16, float16 or float32, "
                             f"got {self.bnb_4bit_compute_dtype!r}.")

    def bnb_config(self) -> BitsAndBytesConfig | None:
        """The bitsandbytes config for `quantization`, or None. Where FSDP or ZeRO-3 shards the parameters, the
        packed 4-bit weights are stored in the compute dtype unless told otherwise: sharding flattens tensors of one
        dtype only."""
        if self.quantization == "4bit":
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=getattr(torch, self.bnb_4bit_compute_dtype),
                bnb_4bit_quant_storage=getattr(torch, self.quant_storage),
            )
        if self.quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return None

    @property
    def quant_storage(self) -> str:
        """The dtype that stores packed 4-bit weights (see `bnb_config`)."""
        return self.bnb_4bit_quant_storage or (self.bnb_4bit_compute_dtype if shards_parameters(self) else "uint8")

    def sharded_qlora_dtype(self) -> torch.dtype | None:
        """The dtype every parameter must have when FSDP or ZeRO-3 shards a 4-bit model (the quant storage), or
        None when this run does not."""
        if self.quantization != "4bit" or not shards_parameters(self):
            return None
        if self.quant_storage == "uint8":
            raise ValueError("FSDP / ZeRO-3 cannot shard 4-bit weights stored as uint8: set bnb_4bit_quant_storage to "
                             "the dtype of the other parameters, e.g. bfloat16.")
        return getattr(torch, self.quant_storage)

    def with_sharded_dtype(self, init: dict) -> dict:
        """`from_pretrained` options with the dtype sharded QLoRA loads every parameter in (see
        `sharded_qlora_dtype`); another dtype given there is an error, as FSDP would fail later on mixed dtypes."""
        dtype = self.sharded_qlora_dtype()
        if dtype is None:
            return init
        given = init.get("dtype", init.get("torch_dtype"))
        if given not in (None, "auto") and (getattr(torch, given) if isinstance(given, str) else given) != dtype:
            raise ValueError(f"Sharded QLoRA (FSDP / ZeRO-3) loads every parameter in {dtype}, the 4-bit weights' "
                             f"storage dtype; got dtype={given!r}. Leave dtype unset, or set bnb_4bit_quant_storage.")
        return {**{key: value for key, value in init.items() if key != "torch_dtype"}, "dtype": dtype}


@dataclass
class LoraArguments:
    use_peft: bool = field(default=True, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Modules given LoRA adapters: all attention and MLP projections by default."},
    )

    def check_lora_arguments(self, quantization: str) -> None:
        if quantization != "none" and not self.use_peft:
            raise ValueError("A quantized backbone cannot be trained directly: keep use_peft=True (QLoRA).")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}.")


@dataclass
class SavingArguments:
    merge_adapter: bool = field(
        default=False, metadata={"help": "Save the model with LoRA merged into the backbone instead of the adapter."}
    )
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id the backbone descends from, for a backbone loaded from a local folder or a GGUF "
                  "file: named as `base_model` in the model card (and config). Such a backbone always saves merged: "
                  "an adapter could not name a base that loads on another machine."},
    )


def check_finite_options(args) -> None:
    """Every float option of a config (its own and the inherited `TrainingArguments` / `SFTConfig` ones), and every
    number in a list or comma-separated option, is finite: NaN passes range checks such as `w <= 0` (False for NaN),
    and NaN class weights trained to loss 0 and a model predicting NaN."""
    for option in dataclasses.fields(args):
        value = getattr(args, option.name, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{option.name} must be a finite number, got {value!r}.")


def parse_number_list(name: str, text: str, count: int | None = None) -> list[float]:
    """`"1,2.5,3"` as floats, each finite and positive (`count` of them where given), or an error naming `name`."""
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}.") from None
    if not all(math.isfinite(v) and v > 0 for v in values) or (count is not None and len(values) != count):
        raise ValueError(f"{name} must be {f'{count} ' if count else ''}finite positive numbers, got {text!r}.")
    return values


def name_best_metric_for_eval_sets(args, eval_dataset) -> None:
    """With a dict of evaluation sets, transformers.Trainer reports `eval_<name>_<metric>`: a
    `metric_for_best_model` naming no set (ours by default, or the loss) then names the first set's."""
    if not isinstance(eval_dataset, dict) or not eval_dataset:
        return
    metric = args.metric_for_best_model or ("loss" if args.load_best_model_at_end else None)
    if metric is None:
        return
    metric = metric.removeprefix("eval_")
    if not any(metric.startswith(f"{name}_") for name in eval_dataset):
        first = next(iter(eval_dataset))
        logger.info("Several evaluation sets: selecting checkpoints on %r of the first one, %r.", metric, first)
        args.metric_for_best_model = f"{first}_{metric}"


def first_split(dataset):
    """The evaluation set that calibration, thresholds and the card use: the first of several, or the only one."""
    return next(iter(dataset.values())) if isinstance(dataset, dict) else dataset
