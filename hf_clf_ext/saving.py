"""What a save must know: where the backbone comes from (a Hub id loads on any machine, a local folder or a GGUF
file only on this one) and whether a folder is a training checkpoint (kept in PEFT's layout, which Trainer resumes
from)."""

import os

from transformers.utils.quantization_config import QuantizationMethod


def hub_base(model) -> str | None:
    """The Hub id the backbone of `model` (a name/path, a loaded model, a PEFT model or a last-token classifier)
    loads from; None for a local folder, a GGUF file or a model built in memory."""
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
    elif getattr(model, "quantization_method", None) == QuantizationMethod.GGUF:
        return None
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        text_config = getattr(base.config, "text_config", None)  # a last-token classifier names its backbone here
        name = getattr(text_config, "name_or_path", None) or base.name_or_path
    return name if name and not os.path.exists(name) else None


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    return os.path.basename(os.path.normpath(path)).startswith("checkpoint-")
