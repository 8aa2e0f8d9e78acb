"""A decoder-only LM with a linear head on the hidden state of its last real token.

Self-contained on purpose (relative imports only): `save_pretrained` copies this file and
`configuration_last_token.py` next to the weights, so the folder loads with `trust_remote_code=True` in a process
that never imports `hf_clf_ext`.
"""

import contextvars
import json
import os
import re
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutputWithPast
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    cached_file,
    extract_commit_hash,
)
from transformers.utils.quantization_config import QuantizationMethod

from .configuration_last_token import LastTokenClassifierConfig, check_decoder_only

IGNORE_INDEX = -100
ADAPTER_SUBFOLDER = "adapter"  # where an adapter + head save keeps the adapter (see `from_pretrained`)
# The `from_pretrained` options that say where a repo's files come from: every file of a save is read with them.
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
HEAD_MODULE = "score"
# Set while `from_pretrained` loads the backbone of an adapter + head save: the head comes from the adapter next, so
# transformers must not report it as missing ("newly initialized ... Consider training"); the adapter is checked to
# hold it instead.
_HEAD_FROM_ADAPTER = contextvars.ContextVar("head_from_adapter", default=False)
_HEAD_PATTERN = rf"^{HEAD_MODULE}\."
# Set by `from_pretrained` on quantized models; a wrapped backbone keeps its quantization state through these.
_QUANTIZATION_ATTRIBUTES = ("hf_quantizer", "is_quantized", "quantization_method", "is_loaded_in_4bit",
                            "is_loaded_in_8bit")


def pool_hidden_states(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool `(batch, seq, hidden)` states into `(batch, hidden)` using only positions where `attention_mask` is 1.

    The last real token is found from the mask, never from `pad_token_id`, so left padding, right padding and
    tokenizers whose pad token is their eos (a real eos may end the text) all pool the same position.
    """
    mask = attention_mask.to(hidden_states.device, torch.long)
    if pooling == "last":
        positions = torch.arange(mask.shape[-1], device=mask.device)
        last = (mask * positions).argmax(dim=-1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
    weights = mask.unsqueeze(-1).to(torch.float32)
    return ((hidden_states.float() * weights).sum(dim=1) / weights.sum(dim=1)).to(hidden_states.dtype)


class LastTokenClassifierPreTrainedModel(PreTrainedModel):
    config_class = LastTokenClassifierConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # Attention runs inside the backbone, which checks its own support when it is built.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The head is tiny and must stay in full precision: the strict list keeps it float32 under bf16/fp16 weights,
    # the plain one is what the bitsandbytes quantizers read to leave it unquantized under a 4-bit / 8-bit backbone.
    _keep_in_fp32_modules = ["score"]
    _keep_in_fp32_modules_strict = ["score"]
    # A causal-LM checkpoint loads into this model: its LM head is not needed.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]
    # The loss is a per-batch mean: the Trainer must not pass `num_items_in_batch` through `forward`.
    accepts_loss_kwargs = False


class LastTokenClassifierForSequenceClassification(LastTokenClassifierPreTrainedModel):
    """Any `AutoModel` decoder-only backbone (as `self.model`) + dropout + a linear head (`self.score`).

    The head sees only the pooled vector of each sequence (stock `*ForSequenceClassification` models project every
    position and then pick one). Position ids are derived from `attention_mask`, so a left-padded example gets the
    same logits as the same example alone.
    """

    def __init__(self, config: LastTokenClassifierConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if backbone is None:
            backbone = AutoModel.from_config(config.text_config)
        else:
            # An already-loaded backbone keeps its weights: `post_init` must not re-initialise it.
            for module in backbone.modules():
                module._is_hf_initialized = True
        self.model = backbone
        self.dropout = nn.Dropout(config.classifier_dropout)
        # float32 even when the model is built under a bf16/fp16 default dtype (`from_pretrained(dtype=...)`).
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=config.head_bias, dtype=torch.float32)
        self.post_init()
        if _HEAD_FROM_ADAPTER.get():
            self._keys_to_ignore_on_load_missing = set(self._keys_to_ignore_on_load_missing) | {_HEAD_PATTERN}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a local folder or Hub repo saved by either layout: the whole model, or adapter + head (the backbone
        is loaded from `config.base_model_name_or_path`, then the adapter and head from `config.adapter_subfolder`).

        The backbone checkpoint's own key prefix (`transformer.` for GPT-2, Falcon, Bloom; `gpt_neox.`; ...) is
        mapped to `model.`, and any backbone weight missing from or unexpected in the checkpoint is an error naming
        the keys: a backbone is never left randomly initialised. `merge_adapter=True` merges an adapter into the
        backbone (a plain model; pass `quantization_config=None` to merge into float weights of a 4-bit base)."""
        path = pretrained_model_name_or_path
        merge_adapter = kwargs.pop("merge_adapter", False)
        hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        kwargs.pop("adapter_kwargs", None)  # the auto factory's adapter lookup; this method finds the adapter itself
        if not isinstance(kwargs.get("config"), PreTrainedConfig):
            kwargs["config"] = cls.config_class.from_pretrained(path, **hub)
        adapter = _saved_adapter(path, kwargs["config"], hub)
        if adapter is None:
            return cls._load_checked(path, *model_args, **kwargs)
        base, subfolder, base_revision = adapter
        config = kwargs["config"]
        if "quantization_config" in kwargs and kwargs["quantization_config"] is None:
            kwargs.pop("quantization_config")
        elif config.base_quantization_config and "quantization_config" not in kwargs:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig.from_dict(dict(config.base_quantization_config))
        # The revision resolved for the adapter's repository means nothing in the base model's: the base loads at the
        # commit it was trained on (recorded in the save), or its default branch for a save that records none.
        base_kwargs = {key: value for key, value in kwargs.items() if key not in ("revision", "subfolder")}
        if base_revision:
            base_kwargs["revision"] = base_revision
        want_info = base_kwargs.pop("output_loading_info", False)
        token = _HEAD_FROM_ADAPTER.set(True)  # the adapter supplies the head: not "missing" (checked below)
        try:
            model, info = cls._load_checked(base, *model_args, output_loading_info=True, **base_kwargs)
        finally:
            _HEAD_FROM_ADAPTER.reset(token)
        model._keys_to_ignore_on_load_missing = set(model._keys_to_ignore_on_load_missing) - {_HEAD_PATTERN}
        from peft import PeftModel

        # Fetched here, then read from the local copy: PEFT's own Hub lookup doubles the subfolder when offline.
        lookup = {key: value for key, value in hub.items() if key != "subfolder"}
        adapter_dir = None
        for name in (ADAPTER_CONFIG_NAME, ADAPTER_SAFE_WEIGHTS_NAME):
            adapter_dir = os.path.dirname(cached_file(path, name, subfolder=_join(hub.get("subfolder"), subfolder),
                                                      **lookup))
        missing = _head_missing_from_adapter(adapter_dir, model)
        if missing:
            raise ValueError(
                f"The adapter of {path} holds no weights for the classification head ({', '.join(missing)}): loaded, "
                f"the head would be randomly initialised. Save the adapter with '{HEAD_MODULE}' among its "
                "modules_to_save (as LastTokenTrainer does), or save the whole model."
            )
        # PEFT's loader keeps the adapter in the float32 it was trained and saved in (transformers' `load_adapter`
        # would create it in a 4-bit backbone's compute dtype); the model keeps its class.
        with warnings.catch_warnings():
            # PEFT reads transformers' deprecated `is_gradient_checkpointing` as it wraps a model: noise on each load.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(model, adapter_dir)
        if merge_adapter:
            model = peft_model.merge_and_unload()
        else:
            model = peft_model.get_base_model()
            model.peft_config, model._hf_peft_config_loaded = peft_model.peft_config, True
        model.name_or_path = str(path)
        model.config.adapter_subfolder = model.config.base_quantization_config = None  # the model is whole now
        if base_revision:
            model.config.base_model_revision = base_revision
        return (model, info) if want_info else model

    @classmethod
    def _load_checked(cls, path, *model_args, **kwargs):
        config = kwargs["config"]
        want_info = kwargs.pop("output_loading_info", False)
        prefix = _checkpoint_prefix(config.text_config)
        if prefix and prefix != cls.base_model_prefix and "key_mapping" not in kwargs:
            kwargs["key_mapping"] = {rf"^{prefix}\.": f"{cls.base_model_prefix}."}
        model, info = super().from_pretrained(path, *model_args, output_loading_info=True, **kwargs)
        # Keys outside the backbone are the head (new here) and the causal LM's output layer (not needed).
        inside = f"{cls.base_model_prefix}."
        missing = sorted(key for key in info["missing_keys"] if key.startswith(inside))
        unexpected = sorted(key for key in info["unexpected_keys"] if key.startswith(inside))
        if missing or unexpected:
            raise ValueError(
                f"The backbone weights in {path} do not match a {config.text_config.model_type} model: "
                + (f"{len(missing)} missing (e.g. {missing[:5]})" if missing else "")
                + (", " if missing and unexpected else "")
                + (f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})" if unexpected else "")
                + ". Loading would leave them randomly initialised; check that the checkpoint is of this family."
            )
        return (model, info) if want_info else model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    @classmethod
    def from_backbone(
        cls,
        backbone: "str | os.PathLike | PreTrainedModel",
        *,
        labels: list[str] | None = None,
        num_labels: int | None = None,
        problem_type: str = "single_label_classification",
        pooling: str = "last",
        tokenizer=None,
        classifier_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        head_bias: bool = False,
        **from_pretrained_kwargs,
    ) -> "LastTokenClassifierForSequenceClassification":
        """Build a classifier from a causal LM given by name/path or as an already-loaded model.

        A name/path goes through `from_pretrained` (so `quantization_config`, `dtype`, `device_map`,
        `attn_implementation`, `gguf_file`, ... all apply): the backbone weights are loaded, the LM head is dropped
        and the classification head is freshly initialised in float32. A loaded model is reused as it is (no copy),
        keeping its `attn_implementation` and quantization state.

        `labels` names the classes in id order (or give `num_labels` for `LABEL_0`, ...). The pad token id comes from
        `tokenizer` when it has one, else from the backbone config; failing both, the eos token serves as pad (and is
        set as the tokenizer's pad token), as for SmolLM2 or Llama 3.
        """
        label_kwargs = _label_kwargs(labels, num_labels)
        head_kwargs = dict(
            problem_type=problem_type,
            pooling=pooling,
            classifier_dropout=classifier_dropout,
            label_smoothing=label_smoothing,
            class_weights=class_weights,
            head_bias=head_bias,
            **label_kwargs,
        )
        if isinstance(backbone, PreTrainedModel):
            if from_pretrained_kwargs:
                raise TypeError(
                    f"Loading options {sorted(from_pretrained_kwargs)} only apply when the backbone is a name or path."
                )
            return cls._wrap_loaded_backbone(backbone, tokenizer, head_kwargs)
        if not isinstance(backbone, (str, os.PathLike)):
            raise TypeError(f"backbone must be a model name/path or a PreTrainedModel, got {type(backbone).__name__}.")
        if from_pretrained_kwargs.get("gguf_file"):
            # GGUF tensor names are mapped through the causal LM's own architecture: load that, then wrap it.
            causal_lm = AutoModelForCausalLM.from_pretrained(backbone, **from_pretrained_kwargs)
            return cls._wrap_loaded_backbone(causal_lm, tokenizer, head_kwargs)
        # A Hub backbone loads at one commit, recorded in the config: an adapter + head save then reloads it there
        # even after the repository's branch (or the tag given) has moved on.
        commit = resolve_commit(backbone, **from_pretrained_kwargs)
        if commit is not None:
            from_pretrained_kwargs["revision"] = commit
        config_kwargs = {
            key: from_pretrained_kwargs[key]
            for key in HUB_KWARGS + ("gguf_file", "trust_remote_code")
            if key in from_pretrained_kwargs
        }
        text_config = AutoConfig.from_pretrained(backbone, **config_kwargs)
        check_decoder_only(text_config)
        config = LastTokenClassifierConfig(
            text_config=text_config, pad_token_id=_resolve_pad_token_id(tokenizer, text_config),
            base_model_revision=commit, **head_kwargs
        )
        return cls.from_pretrained(backbone, config=config, **from_pretrained_kwargs)

    @classmethod
    def _wrap_loaded_backbone(cls, model: PreTrainedModel, tokenizer, head_kwargs: dict):
        backbone = model.base_model
        text_config = backbone.config
        check_decoder_only(text_config)
        # Building the composite config resets its sub-config's attention implementation: carry it over explicitly,
        # or the backbone would silently switch kernels (and, for some models, give different logits).
        attn_implementation = text_config._attn_implementation
        config = LastTokenClassifierConfig(
            text_config=text_config,
            pad_token_id=_resolve_pad_token_id(tokenizer, text_config),
            attn_implementation=attn_implementation,
            **head_kwargs,
        )
        config.name_or_path = model.name_or_path
        classifier = cls(config, backbone=backbone)
        classifier.score.to(next(backbone.parameters()).device)
        if getattr(model, "quantization_method", None) == QuantizationMethod.GGUF:
            # GGUF weights are de-quantized to plain tensors on load; dropping the bookkeeping makes them savable.
            model.hf_quantizer.remove_quantization_config(model)
        if getattr(model, "hf_quantizer", None) is not None:
            for name in _QUANTIZATION_ATTRIBUTES:
                if hasattr(model, name):
                    setattr(classifier, name, getattr(model, name))
            classifier.config.quantization_config = model.config.quantization_config
        return classifier

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast | tuple:
        inputs = input_ids if input_ids is not None else inputs_embeds
        if inputs is None:
            raise ValueError("Pass either input_ids or inputs_embeds.")
        if self.config.suffix_token_ids and position_ids is not None:
            raise ValueError("position_ids cannot be given together with a pooling suffix (suffix_token_ids).")
        if not torch.compiler.is_compiling():  # checks that read values on the host stay off traced graphs
            self._check_inputs(inputs, attention_mask)
            if attention_mask is None and input_ids is not None:
                self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        if self.config.suffix_token_ids:
            input_ids, inputs_embeds, attention_mask = self._append_suffix(input_ids, inputs_embeds, attention_mask)
        if position_ids is None:
            # Count real tokens only, so a left-padded sequence sees the same positions as it would alone.
            position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
        kwargs.pop("use_cache", None)
        kwargs.pop("past_key_values", None)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        pooled = pool_hidden_states(outputs.last_hidden_state, attention_mask, self.config.pooling)
        pooled = pooled.to(device=self.score.weight.device, dtype=self.score.weight.dtype)
        logits = self.score(self.dropout(pooled)) / self.config.temperature
        loss = self.classification_loss(logits, labels) if labels is not None else None
        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        return output if return_dict is not False else output.to_tuple()

    def _append_suffix(self, input_ids, inputs_embeds, attention_mask):
        """Move each sequence's real tokens to the right (left padding, order kept) and append the suffix tokens, so
        the suffix follows the last real token whatever the padding side was. Index arithmetic on the contiguous run
        of real tokens (checked in `_check_inputs`), not a sort: it exports to ONNX."""
        mask = attention_mask.long()
        width = mask.shape[1]
        length = mask.sum(dim=1, keepdim=True)
        first = mask.argmax(dim=1, keepdim=True)  # first real token
        slots = torch.arange(width, device=mask.device).expand_as(mask)
        pad_slot = torch.where(first > 0, torch.zeros_like(first), torch.full_like(first, width - 1))
        real = slots >= width - length
        order = torch.where(real, first + slots - (width - length), pad_slot)
        suffix = torch.tensor(self.config.suffix_token_ids, dtype=torch.long, device=attention_mask.device)
        suffix = suffix.expand(attention_mask.shape[0], -1)
        attention_mask = torch.cat(
            [attention_mask.gather(1, order), torch.ones_like(suffix, dtype=attention_mask.dtype)], 1
        )
        if input_ids is not None:
            return torch.cat([input_ids.gather(1, order), suffix], 1), None, attention_mask
        gathered = inputs_embeds.gather(1, order.unsqueeze(-1).expand(-1, -1, inputs_embeds.shape[-1]))
        suffix_embeds = self.get_input_embeddings()(suffix).to(inputs_embeds.dtype)
        return None, torch.cat([gathered, suffix_embeds], 1), attention_mask

    def _check_inputs(self, inputs, attention_mask):
        if inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise ValueError(
                f"Empty batch: got inputs of shape {tuple(inputs.shape[:2])}; there is nothing to classify."
            )
        if attention_mask is None:
            attention_mask = torch.ones(inputs.shape[:2], dtype=torch.long)
        empty_rows = (attention_mask.sum(dim=-1) == 0).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(f"Sequences {empty_rows} of the batch have no real token (attention_mask is all 0).")
        starts = (attention_mask.long().diff(dim=-1, prepend=torch.zeros_like(attention_mask[:, :1])) == 1).sum(-1)
        split_rows = (starts > 1).nonzero().flatten().tolist()
        if split_rows:
            raise ValueError(f"Sequences {split_rows} of the batch have gaps in attention_mask: each row must be one "
                             "run of real tokens, padded on the left or the right.")
        limit = getattr(self.config.text_config.get_text_config(), "max_position_embeddings", None)
        suffix = len(self.config.suffix_token_ids or [])
        longest = int(attention_mask.sum(dim=-1).max()) + suffix
        if limit is not None and longest > limit:
            raise ValueError(
                f"A sequence of {longest} tokens{' (pooling suffix included)' if suffix else ''} is longer than the "
                f"backbone's context of {limit} tokens: truncate the texts to at most {limit - suffix} tokens "
                "(e.g. tokenizer(..., truncation=True, max_length=...))."
            )

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (single-label, optional class weights and label smoothing) or BCE with logits (multi-label,
        optional `pos_weight`); labels are checked first so that a bad target fails loudly, not as a CUDA assert."""
        config = self.config
        labels = labels.to(logits.device)
        weights = None
        if config.class_weights is not None:
            weights = torch.tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
        if config.problem_type == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(
                    f"Multi-label targets must be multi-hot of shape (batch, num_labels) = {tuple(logits.shape)}, "
                    f"got {tuple(labels.shape)}."
                )
            if not torch.all((labels == 0) | (labels == 1)):
                raise ValueError("Multi-label targets must be multi-hot: every value 0 or 1.")
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weights)
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0] or labels.is_floating_point():
            raise ValueError(
                f"Single-label targets must be integer class ids of shape (batch,) = ({logits.shape[0]},), got "
                f"{labels.dtype} of shape {tuple(labels.shape)}. For multi-hot targets set "
                "problem_type='multi_label_classification'."
            )
        out_of_range = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= config.num_labels))]
        if out_of_range.numel():
            raise ValueError(
                f"Labels {sorted(set(out_of_range.tolist()))} are out of range for {config.num_labels} classes "
                f"(valid: 0..{config.num_labels - 1}, or {IGNORE_INDEX} to ignore)."
            )
        return F.cross_entropy(
            logits, labels.long(), weight=weights, ignore_index=IGNORE_INDEX, label_smoothing=config.label_smoothing
        )


def _saved_adapter(path, config, hub: dict) -> tuple[str, str | None, str | None] | None:
    """`(base model, adapter subfolder, base commit)` when `path` holds adapter + head rather than a whole model, else
    None.

    The current layout names all three in `config.json` (the commit in `base_model_revision`, None in saves made
    before it was recorded); a folder of the earlier layout (adapter files at the top, no model weights) names its
    base and its commit (`revision`) in `adapter_config.json`."""
    if config.adapter_subfolder:
        if not config.base_model_name_or_path:
            raise ValueError(f"{path} holds an adapter but its config.json names no base_model_name_or_path.")
        return config.base_model_name_or_path, config.adapter_subfolder, getattr(config, "base_model_revision", None)
    lookup = {key: hub[key] for key in ("revision", "token", "cache_dir", "local_files_only", "subfolder")
              if key in hub}
    adapter_config = cached_file(path, ADAPTER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **lookup)
    if adapter_config is None:
        return None
    for weights in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME):
        if cached_file(path, weights, _raise_exceptions_for_missing_entries=False, **lookup) is not None:
            return None
    with open(adapter_config, encoding="utf-8") as file:
        saved = json.load(file)
    return saved["base_model_name_or_path"], None, saved.get("revision")


def resolve_commit(repo_id, revision=None, **hub) -> str | None:
    """The commit hash `revision` (a branch, tag or commit; None: the default branch) of Hub repo `repo_id` points
    to now: the snapshot its `config.json` is served from (`.../snapshots/<commit>/config.json`, from the Hub or,
    offline, the local cache). None for a local folder, or a repository that cannot be resolved. `hub`: `token`,
    `cache_dir`, `local_files_only`, `subfolder`, ... (other keys are ignored)."""
    revision = getattr(revision, "resolved", None) or revision  # a `huggingface_hub.ResolvedRevision`
    if repo_id is None or os.path.isdir(str(repo_id)):
        return None
    if isinstance(revision, str) and _COMMIT_HASH.match(revision):
        return str(revision)
    lookup = {key: hub[key] for key in HUB_KWARGS if key in hub and key != "revision" and hub[key] is not None}
    try:
        resolved = cached_file(str(repo_id), CONFIG_NAME, revision=revision,
                               _raise_exceptions_for_missing_entries=False, **lookup)
    except (OSError, ValueError):
        return None
    return extract_commit_hash(resolved, None)


def _join(*parts) -> str:
    return "/".join(part.strip("/") for part in parts if part)


def _head_missing_from_adapter(adapter_dir: str, model) -> list[str]:
    """The head's parameters (`score.weight`, `score.bias`) the adapter's weights file does not hold (PEFT saves a
    module of `modules_to_save` as `base_model.model.score.weight`)."""
    from safetensors import safe_open

    with safe_open(os.path.join(adapter_dir, ADAPTER_SAFE_WEIGHTS_NAME), framework="pt") as file:
        keys = set(file.keys())
    head = [f"{HEAD_MODULE}.{name}" for name, _ in getattr(model, HEAD_MODULE).named_parameters()]
    return [name for name in head if not any(key == name or key.endswith(f".{name}") for key in keys)]


def _checkpoint_prefix(text_config) -> str | None:
    """The key prefix the backbone's own family uses in its checkpoints (`model`, `transformer`, `gpt_neox`...)."""
    try:
        return MODEL_MAPPING[type(text_config)].base_model_prefix
    except (KeyError, ValueError):  # a remote-code backbone: its checkpoint keys are taken as they are
        return None


def _label_kwargs(labels: list[str] | None, num_labels: int | None) -> dict:
    if labels is None:
        if num_labels is None:
            raise ValueError("Give the class names as `labels=[...]` (in id order) or their number as `num_labels`.")
        return {"num_labels": num_labels}
    labels = [str(label) for label in labels]
    if num_labels is not None and num_labels != len(labels):
        raise ValueError(f"num_labels={num_labels} is inconsistent with the {len(labels)} labels given: {labels}.")
    return {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}


def _resolve_pad_token_id(tokenizer, text_config) -> int:
    """The tokenizer's pad token, else the backbone's, else eos; a tokenizer without one gets it as pad token."""
    candidates = [getattr(tokenizer, "pad_token_id", None), getattr(text_config, "pad_token_id", None)]
    candidates += [getattr(tokenizer, "eos_token_id", None), getattr(text_config, "eos_token_id", None)]
    for candidate in candidates:
        if isinstance(candidate, (list, tuple)):
            candidate = candidate[0] if candidate else None
        if candidate is not None:
            break
    else:
        raise ValueError(
            "Neither the tokenizer nor the backbone config has a pad token or an eos token to pad with: set one, "
            "e.g. `tokenizer.add_special_tokens({'pad_token': '<pad>'})`, and resize the backbone's embeddings."
        )
    if tokenizer is not None and tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = candidate
    return candidate


LastTokenClassifierForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
