"""What a save must know: where the backbone comes from (a Hub id loads on any machine, a local folder or a GGUF
file only on this one), at which commit, and whether a save is a training checkpoint (kept in PEFT's layout, which
Trainer resumes from)."""

import logging
import os

from transformers.utils.quantization_config import QuantizationMethod

from .last_token.modeling_last_token import LastTokenClassifierForSequenceClassification, resolve_commit

logger = logging.getLogger(__name__)


def hub_base(model) -> str | None:
    """The Hub id the backbone of `model` (a name/path, a loaded model, a PEFT model or a last-token classifier)
    loads from; None for a local folder, a GGUF file or a model built in memory.

    A classifier loaded from an adapter + head save names the base it loaded (`base_model_name_or_path`); any other
    loaded model names where its weights came from (`name_or_path`), not the original base its config remembers in
    `text_config`: a classifier loaded from a merged save holds fine-tuned backbone weights that the base lacks."""
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
    elif getattr(model, "quantization_method", None) == QuantizationMethod.GGUF:
        return None
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        name = base.name_or_path
        if isinstance(base, LastTokenClassifierForSequenceClassification) and getattr(base, "_hf_peft_config_loaded",
                                                                                       False):
            name = base.config.base_model_name_or_path or name
    return name if name and not os.path.exists(name) else None


def base_revision(model, base: str | None, hub_kwargs: dict | None = None) -> str | None:
    """The commit of Hub repo `base` (see `hub_base`) that the backbone of `model` was loaded from, for a save to
    record: the one `model` records for `base` (a last-token classifier's `base_model_revision`, set by
    `from_backbone`; a PEFT adapter's `revision`); else the `revision` in `hub_kwargs` (give it where `model` was
    loaded from a name with it: a trainer's `model_init_kwargs`) or, without one, the default branch, resolved to the
    commit it points to now, at training time. None for a local or in-memory backbone. `hub_kwargs`: `revision`,
    `token`, `cache_dir`, `local_files_only`."""
    if base is None:
        return None
    hub_kwargs = dict(hub_kwargs or {})
    revision = hub_kwargs.pop("revision", None)
    if not isinstance(model, (str, os.PathLike)):
        recorded = _recorded_revision(model, base)
        if recorded:
            return recorded
    commit = resolve_commit(base, revision, **hub_kwargs)
    if commit is None:
        logger.warning("Could not resolve the commit of %s%s: an adapter save will load it at whatever its default "
                       "branch then holds.", base, f" at {revision}" if revision else "")
    return commit


def _recorded_revision(model, base: str) -> str | None:
    """The revision `model` records for its backbone `base`: a record for another repository (a classifier loaded
    from a merged save remembers the base it was first trained on) does not apply."""
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "revision", None) and getattr(config, "base_model_name_or_path", None) == base:
            return config.revision
    classifier = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(classifier, LastTokenClassifierForSequenceClassification):
        config = classifier.config
        named = config.base_model_name_or_path or config.text_config.name_or_path
        if config.base_model_revision and named == base:
            return config.base_model_revision
    return None


def local_source(model) -> str | None:
    """The real path of the local folder `model` (a name/path, a loaded model, a PEFT model) was loaded from, or
    None (a Hub id, a model built in memory)."""
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        name = getattr(base, "name_or_path", None)
    return os.path.realpath(name) if name and os.path.isdir(name) else None


def check_not_source(output_dir: str | os.PathLike, source: str | None) -> None:
    """Refuse to save into the folder the model was loaded from: the save would replace the user's model (a causal
    LM by a classifier, a tokenizer by a stripping one) while its weights are still being read from there."""
    if source is not None and os.path.realpath(output_dir) == source:
        raise ValueError(f"{output_dir} is the folder the model was loaded from: saving there would overwrite it. "
                         "Save to another folder (output_dir).")


class CheckpointSaves:
    """Mixin for a `Trainer`: `saving_checkpoint` is True while Trainer writes a checkpoint (`checkpoint-<step>`, which
    it resumes from), False for `save_model`, whatever the folder is called (a final save into a folder named
    `checkpoint-best` is a final save)."""

    saving_checkpoint = False

    def _save_checkpoint(self, *args, **kwargs):
        self.saving_checkpoint = True
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self.saving_checkpoint = False

    def _tune_save_checkpoint(self, *args, **kwargs):
        self.saving_checkpoint = True
        try:
            return super()._tune_save_checkpoint(*args, **kwargs)
        finally:
            self.saving_checkpoint = False


def local_folder(name_or_path: str, hub: dict | None = None) -> str:
    """A local folder as it is, else a Hub repo's files in the local cache (for engines that are given a folder:
    they read the revision `hub` names, and nothing else is fetched later)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download

    return snapshot_download(name_or_path, **(hub or {}))
