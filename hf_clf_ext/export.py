"""Export a last-token classifier to the backbone's own stock `<Arch>ForSequenceClassification`, which plain
transformers, `pipeline()`, vLLM (`runner="pooling"`) and ONNX exporters serve without this package.

What moves where: the LoRA adapter is merged into the backbone; the temperature is folded into the head weights
(logits / T = (W / T) h); the pooling suffix moves into the tokenizer's post-processor, which appends it after
truncation, so `tokenizer(text, truncation=True)` yields exactly the ids the classifier pools; the stock model pools
the last non-pad token, which is then the suffix's last token. The tokenizer strips white space at both ends of a
text (`texts.normalize_text`, as training did) in its normalizer. Multi-label decision thresholds stay in
`config.json` (`decision_thresholds`) and the card: stock heads return scores only.
"""

import copy
import json
import os

import torch
from tokenizers import processors
from transformers import AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from .last_token.modeling_last_token import LastTokenClassifierForSequenceClassification
from .texts import add_strip_normalizer

EXPORT_FACTS_FILE = "export.json"


def export_stock(source, output_dir: str | os.PathLike, tokenizer=None, **load_kwargs) -> str:
    """Write `source` (a folder or Hub repo saved by either layout, or a loaded classifier) to `output_dir` as a stock
    `<Arch>ForSequenceClassification` with its tokenizer; returns the stock class name.

    Refused, with the reason: mean pooling (stock heads pool the last token), a head with a bias (stock heads have
    none; retrain with the default `head_bias=False`), a family transformers has no sequence-classification class for.
    """
    if isinstance(source, LastTokenClassifierForSequenceClassification):
        classifier = source
        if tokenizer is None:
            raise ValueError("Pass the classifier's tokenizer to export a loaded model.")
    else:
        classifier = LastTokenClassifierForSequenceClassification.from_pretrained(
            source, merge_adapter=True, quantization_config=None, **load_kwargs
        )
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    config = classifier.config
    if getattr(classifier, "_hf_peft_config_loaded", False):
        raise ValueError("The classifier still holds an unmerged adapter: load it with merge_adapter=True.")
    if config.pooling != "last":
        raise ValueError(f"pooling={config.pooling!r} cannot be exported: stock heads pool the last token.")
    if classifier.score.bias is not None:
        raise ValueError("The head has a bias, which stock *ForSequenceClassification heads lack: retrain with "
                         "head_bias=False (the default) to export exactly.")
    text_config = config.text_config
    try:
        stock_class = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(text_config)]
    except KeyError:
        raise ValueError(f"transformers has no sequence-classification class for model_type "
                         f"{text_config.model_type!r}: it cannot be exported to a stock architecture.") from None

    stock_config = copy.deepcopy(text_config)
    stock_config.num_labels = config.num_labels
    stock_config.id2label, stock_config.label2id = dict(config.id2label), dict(config.label2id)
    stock_config.problem_type = config.problem_type
    stock_config.pad_token_id = config.pad_token_id
    stock_config.architectures = [stock_class.__name__]
    if config.decision_thresholds:
        stock_config.decision_thresholds = list(config.decision_thresholds)
    with torch.device("meta"):
        stock = stock_class(stock_config)
    prefix = stock.base_model_prefix
    state = {f"{prefix}.{key}": value for key, value in classifier.model.state_dict().items()}
    state["score.weight"] = (classifier.score.weight.detach().float() / config.temperature).to(
        stock.score.weight.dtype)
    result = stock.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{stock_class.__name__} does not take the classifier's weights: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}.")
    stock.tie_weights()
    stock.save_pretrained(output_dir)
    stock_tokenizer = copy.deepcopy(tokenizer)
    add_strip_normalizer(stock_tokenizer)  # texts stripped as in training, for users who never import this package
    append_suffix_to_tokenizer(stock_tokenizer, config.suffix_token_ids or [], config.pooling_suffix)
    stock_tokenizer.model_max_length = tokenizer.model_max_length + len(config.suffix_token_ids or [])
    stock_tokenizer.padding_side = "right"  # position ids count from the first token in stock models
    stock_tokenizer.save_pretrained(output_dir)
    with open(os.path.join(output_dir, EXPORT_FACTS_FILE), "w", encoding="utf-8") as file:
        json.dump({"exported_from": str(getattr(source, "name_or_path", source)), "architecture": stock_class.__name__,
                   "temperature_folded": config.temperature, "pooling_suffix": config.pooling_suffix,
                   "suffix_token_ids": config.suffix_token_ids, "max_length": stock_tokenizer.model_max_length,
                   "decision_thresholds": config.decision_thresholds}, file, indent=2)
    return stock_class.__name__


def export_instruction(source, output_dir: str | os.PathLike, **load_kwargs) -> str:
    """Write an instruction classifier (folder or Hub repo) as a merged causal LM with its tokenizer, verbalizer and
    prompt settings: a folder any engine generates from (vLLM, TGI, llama.cpp after conversion), and that
    `InstructionClassifier.from_pretrained` loads with constrained decoding and label scoring."""
    from .instruction.classifier import InstructionClassifier

    classifier = InstructionClassifier.from_pretrained(source, **load_kwargs)
    model = classifier.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if getattr(model, "hf_quantizer", None) is not None:
        model = model.dequantize()
    model.save_pretrained(output_dir)
    classifier.tokenizer.save_pretrained(output_dir)
    classifier.save_settings(output_dir)
    return type(model).__name__


def append_suffix_to_tokenizer(tokenizer, suffix_ids: list[int], suffix_text: str | None) -> None:
    """Make the fast tokenizer's post-processor append `suffix_ids` after each text (after its own special tokens
    and after truncation, which leaves room for them)."""
    if not suffix_ids:
        return
    backend = tokenizer.backend_tokenizer
    tokens = [backend.id_to_token(i) for i in suffix_ids]
    suffix = processors.TemplateProcessing(
        single="$A:0 <pooling_suffix>:0", pair="$A:0 $B:1 <pooling_suffix>:1",
        special_tokens=[{"id": "<pooling_suffix>", "ids": list(suffix_ids), "tokens": tokens}],
    )
    existing = backend.post_processor
    backend.post_processor = suffix if existing is None else processors.Sequence([existing, suffix])
    check = tokenizer("x")["input_ids"]
    if check[-len(suffix_ids):] != list(suffix_ids):
        raise ValueError(f"The tokenizer did not keep the pooling suffix {suffix_text!r} in its post-processor.")
