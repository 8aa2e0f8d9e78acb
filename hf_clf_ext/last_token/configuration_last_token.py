"""Configuration of the last-token classifier: a decoder-only backbone config plus the head's settings.

Self-contained on purpose (it imports only `transformers`): `save_pretrained` copies this file next to the weights
so that the folder loads with `trust_remote_code=True` in a process that never imports `hf_clf_ext`.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

POOLING_METHODS = ("last", "mean")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


def check_decoder_only(config: PreTrainedConfig) -> None:
    """Raise unless `config` describes a decoder-only language model (Llama, Qwen, Mistral, Gemma, SmolLM, ...).

    Encoders (BERT-like, listed for masked LM) and encoder-decoders (T5, BART) have no causal "last token" that
    has seen the whole text, so pooling it would silently give a poor classifier.
    """
    model_type = getattr(config, "model_type", None)
    is_causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in (
        getattr(config, "auto_map", None) or {}
    )
    if (
        getattr(config, "is_encoder_decoder", False)
        or model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        or not is_causal
    ):
        raise ValueError(
            f"The backbone must be a decoder-only causal language model (Llama, Qwen2/3, Mistral, Gemma 3, SmolLM, "
            f"...); got model_type={model_type!r}, which is "
            + ("an encoder-decoder." if getattr(config, "is_encoder_decoder", False) else "not a decoder-only LM.")
        )


class LastTokenClassifierConfig(PreTrainedConfig):
    r"""
    Configuration of [`LastTokenClassifierForSequenceClassification`]
    [hf_clf_ext.last_token.modeling_last_token.LastTokenClassifierForSequenceClassification].

    Attributes:
        text_config (`dict` or `PreTrainedConfig`):
            Configuration of the decoder-only backbone (any `AutoModel` causal LM: Llama, Qwen2/3, Mistral,
            Gemma 3, SmolLM, ...).
        pooling (`str`, *optional*, defaults to `"last"`):
            `"last"` takes the hidden state of the last real token (found from `attention_mask`, so left padding,
            right padding and pad == eos are all handled); `"mean"` averages the hidden states of all real tokens.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout applied to the pooled vector before the linear head.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the single-label cross-entropy loss.
        class_weights (`list[float]`, *optional*):
            One positive weight per label: the `weight` of the cross-entropy loss (single-label) or the
            `pos_weight` of the binary cross-entropy loss (multi-label).
        suffix_token_ids (`list[int]`, *optional*):
            Token ids appended after the last real token of every sequence inside `forward` (the "pooling suffix",
            e.g. the tokens of `"\nLabel:"`). The pooled token is then always the same kind of position, not a word
            cut mid-sentence, and training, `predict` and `pipeline()` all see the same input.
        pooling_suffix (`str`, *optional*):
            The text `suffix_token_ids` were tokenized from, kept for model cards and readers.
        temperature (`float`, *optional*, defaults to 1.0):
            Logits are divided by it (temperature scaling, fitted on validation data after training), so softmax /
            sigmoid scores, in `pipeline()` too, are calibrated probabilities.
        decision_thresholds (`list[float]`, *optional*):
            Multi-label: per-class probability thresholds (tuned on validation data); 0.5 when unset.
        head_bias (`bool`, *optional*, defaults to `False`):
            Whether the linear head has a bias. Stock `*ForSequenceClassification` heads have none, so a bias-free
            head exports to the stock architecture (and vLLM) exactly.
        base_model_name_or_path (`str`, *optional*):
            Hub id of the backbone the classifier was fine-tuned from (the model card's `base_model`). A folder saved
            as adapter + head loads its backbone from here.
        base_model_revision (`str`, *optional*):
            The commit of `base_model_name_or_path` the backbone was loaded from in training (a 40-hex commit hash,
            also when training named a branch or tag, or none: the branch as it was then). An adapter + head save
            loads its backbone at this commit, so a later push to the base repository does not change the
            classifier; a revision given when loading the classifier applies to the classifier's own repository.
        adapter_subfolder (`str`, *optional*):
            Set in a folder saved as adapter + head: the subfolder holding the LoRA adapter and the head. A
            top-level `adapter_config.json` would make transformers' Auto classes load the base model alone.
        base_quantization_config (`dict`, *optional*):
            With `adapter_subfolder`: how the backbone was quantized in training (e.g. 4-bit NF4), applied again
            when it is loaded, so the adapter runs on the weights it was trained on.
        pad_token_id (`int`, *optional*):
            The padding token of the tokenizer the model was built with (pooling itself relies on `attention_mask`).
        problem_type (`str`, *optional*, defaults to `"single_label_classification"`):
            `"single_label_classification"` (softmax, cross-entropy) or `"multi_label_classification"` (sigmoid,
            binary cross-entropy with multi-hot targets).
    """

    model_type = "last_token_classifier"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    pooling: str = "last"
    classifier_dropout: float = 0.0
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    suffix_token_ids: list[int] | None = None
    pooling_suffix: str | None = None
    temperature: float = 1.0
    decision_thresholds: list[float] | None = None
    head_bias: bool = False
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    adapter_subfolder: str | None = None
    base_quantization_config: dict | None = None
    pad_token_id: int | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        num_labels = kwargs.get("num_labels")
        if self.id2label is not None and num_labels is not None and len(self.id2label) != num_labels:
            raise ValueError(
                f"num_labels={num_labels} is inconsistent with id2label, which has {len(self.id2label)} labels: "
                f"{dict(self.id2label)}."
            )
        super().__post_init__(**kwargs)
        if self.problem_type is None:
            self.problem_type = "single_label_classification"
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}.")
        if self.pooling not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {self.pooling!r}.")
        if self.label2id is not None:
            expected = {label: index for index, label in self.id2label.items()}
            if {str(k): int(v) for k, v in self.label2id.items()} != {str(k): v for k, v in expected.items()}:
                raise ValueError(f"label2id {self.label2id} is not the inverse of id2label {self.id2label}.")
        if len(set(self.id2label.values())) != len(self.id2label):
            raise ValueError(f"id2label holds duplicate label names: {self.id2label}.")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.label_smoothing and self.problem_type == "multi_label_classification":
            raise ValueError("label_smoothing applies to the single-label cross-entropy loss only.")
        if self.class_weights is not None:
            self.class_weights = [float(w) for w in self.class_weights]
            if len(self.class_weights) != self.num_labels or min(self.class_weights) <= 0:
                raise ValueError(
                    f"class_weights must hold {self.num_labels} positive numbers (one per label), "
                    f"got {self.class_weights}."
                )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if self.decision_thresholds is not None:
            self.decision_thresholds = [float(t) for t in self.decision_thresholds]
            if self.problem_type != "multi_label_classification":
                raise ValueError("decision_thresholds apply to multi-label classification only.")
            if (
                len(self.decision_thresholds) != self.num_labels
                or not all(0 < t < 1 for t in self.decision_thresholds)
            ):
                raise ValueError(
                    f"decision_thresholds must hold {self.num_labels} values in (0, 1), "
                    f"got {self.decision_thresholds}."
                )
        if self.suffix_token_ids is not None:
            self.suffix_token_ids = [int(i) for i in self.suffix_token_ids] or None
        check_decoder_only(self.text_config)

    @property
    def hidden_size(self) -> int:
        return self.text_config.get_text_config().hidden_size


LastTokenClassifierConfig.register_for_auto_class()
