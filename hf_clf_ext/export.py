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
import shutil
import tempfile

import torch
from tokenizers import processors
from transformers import AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from .last_token.modeling_last_token import HUB_KWARGS, LastTokenClassifierForSequenceClassification
from .texts import add_strip_normalizer, strips_whole_texts

EXPORT_FACTS_FILE = "export.json"
ONNX_FILE = "model.onnx"
ONNX_FACTS_FILE = "onnx.json"  # what a runtime needs besides the graph: labels, activation, lengths, padding
QUANTIZATIONS = ("int8",)


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
        # The tokenizer of the same revision (and cache, token, ...) as the weights.
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(
            source, **{key: value for key, value in load_kwargs.items() if key in HUB_KWARGS})
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
    stock_config.temperature_folded = config.temperature  # as a stock distillation student records it
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
    # The tokenizer is built before anything is written: a refusal leaves no half-written folder behind.
    # Texts stripped as in training, for users who never import this package.
    stock_tokenizer = add_strip_normalizer(copy.deepcopy(tokenizer))
    append_suffix_to_tokenizer(stock_tokenizer, config.suffix_token_ids or [], config.pooling_suffix)
    stock_tokenizer.model_max_length = tokenizer.model_max_length + len(config.suffix_token_ids or [])
    stock_tokenizer.padding_side = "right"  # position ids count from the first token in stock models
    stock.save_pretrained(output_dir)
    stock_tokenizer.save_pretrained(output_dir)
    with open(os.path.join(output_dir, EXPORT_FACTS_FILE), "w", encoding="utf-8") as file:
        json.dump({"exported_from": str(getattr(source, "name_or_path", source)), "architecture": stock_class.__name__,
                   "temperature_folded": config.temperature, "pooling_suffix": config.pooling_suffix,
                   "suffix_token_ids": config.suffix_token_ids, "max_length": stock_tokenizer.model_max_length,
                   "truncation_side": stock_tokenizer.truncation_side,
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


def export_onnx(source, output_dir: str | os.PathLike, *, quantize: str | None = None,
                nodes_to_exclude: list[str] | None = None, **load_kwargs) -> dict:
    """Write `source` to `output_dir` as an ONNX folder: `model.onnx` (`input_ids`, `attention_mask` -> `logits`,
    dynamic batch and length; the temperature folded into the head), the tokenizer with the pooling suffix in its
    post-processor, `config.json` (`id2label`, `problem_type`, `decision_thresholds`), `onnx.json` (what a runtime
    needs besides the graph) and a card saying how to run it, with or without this package. Returns `onnx.json`'s
    facts.

    `source`: a last-token classifier (folder or Hub repo; exported to the stock architecture first, see
    `export_stock`), its stock export, or a sequence-classification student. `TextClassifier.from_pretrained(
    output_dir)` runs the folder with onnxruntime.

    `quantize="int8"`: the weights of every weight product (MatMul) stored as signed 8-bit integers in blocks of 32
    along the input dimension, a scale each (onnxruntime's `MatMulNBits`; activations stay float32), except
    `nodes_to_exclude`. Why weight-only: on the main job's SmolLM2 (benchmarks/results/onnx.md), dynamic quantization,
    which also rounds each batch's activations to 8 bits with one scale, kept eager's label for 97 / 445 articles; its
    MLP inputs reach thousands of times their mean in a few layers, and leaving those layers in float32 still left
    91-94 / 96 in agreement. Block-wise int8 weights kept 96 / 96 with half the file, at float32's speed on this CPU
    (AVX2 without VNNI)."""
    from transformers import AutoModelForSequenceClassification

    from .classifier import saved_approach
    from .engines.onnxruntime_engine import require_onnxruntime

    require_onnxruntime()  # its quantization tools, and whoever runs the folder, need it

    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize={quantize!r}: use {' or '.join(map(repr, QUANTIZATIONS))}, or None for float32.")
    output_dir = str(output_dir)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise ValueError(f"{output_dir} is not empty; choose a new folder.")
    approach = saved_approach(str(source))
    if approach not in ("last_token", "stock"):
        raise ValueError(f"{source} is {'an' if approach == 'instruction' else 'a'} {approach} classifier: the ONNX "
                         "export takes last-token classifiers, their stock exports and sequence-classification "
                         "students.")
    with tempfile.TemporaryDirectory() as scratch:
        stock_dir = str(source)
        if approach == "last_token":
            stock_dir = os.path.join(scratch, "stock")
            export_stock(source, stock_dir, **load_kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(stock_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(stock_dir)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{source}'s tokenizer has no pad token: batches could not be padded.")
        tokenizer.padding_side = "right"
        encoded = tokenizer(["a b c", "a"], padding=True, return_tensors="pt")
        sample = {name: encoded[name] for name in ("input_ids", "attention_mask")}
        graph = os.path.join(scratch, "graph", ONNX_FILE)
        os.makedirs(os.path.dirname(graph))
        # Protobuf holds at most 2 GiB: larger weights go to model.onnx.data beside the graph.
        external = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
        with torch.no_grad():
            program = torch.onnx.export(_Logits(model).eval(), (), kwargs=sample, dynamo=True, output_names=["logits"],
                                        dynamic_shapes={name: {0: "batch", 1: "sequence"} for name in sample})
        program.save(graph, external_data=external)
        os.makedirs(output_dir, exist_ok=True)
        if quantize == "int8":
            _quantize_weights_int8(graph, os.path.join(output_dir, ONNX_FILE), nodes_to_exclude or [], external)
        else:
            for name in os.listdir(os.path.dirname(graph)):
                shutil.copyfile(os.path.join(os.path.dirname(graph), name), os.path.join(output_dir, name))
        model.config.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        config = model.config
        facts = {"exported_from": str(getattr(source, "name_or_path", source)),
                 "architecture": type(model).__name__, "quantization": quantize,
                 "nodes_not_quantized": list(nodes_to_exclude or []) if quantize else None,
                 "labels": [config.id2label[i] for i in range(config.num_labels)],
                 "activation": "sigmoid" if config.problem_type == "multi_label_classification" else "softmax",
                 "decision_thresholds": getattr(config, "decision_thresholds", None),
                 "max_length": tokenizer.model_max_length, "truncation_side": tokenizer.truncation_side,
                 "pad_token_id": tokenizer.pad_token_id, "strips_texts": strips_whole_texts(tokenizer),
                 "padding_side": "right", "inputs": ["input_ids", "attention_mask"], "outputs": ["logits"]}
        if os.path.isfile(os.path.join(stock_dir, EXPORT_FACTS_FILE)):
            with open(os.path.join(stock_dir, EXPORT_FACTS_FILE), encoding="utf-8") as file:
                facts["stock_export"] = json.load(file)
    with open(os.path.join(output_dir, ONNX_FACTS_FILE), "w", encoding="utf-8") as file:
        json.dump(facts, file, indent=2)
    from .cards.model_card import onnx_card

    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as file:
        file.write(onnx_card(facts, output_dir))
    return facts


INT8_BLOCK_SIZE = 32  # weights per scale: 32 kept |Δp| <= 0.04 against float32 on the main job's model (128: 0.08)


def _quantize_weights_int8(graph: str, output: str, nodes_to_exclude: list[str], external: bool) -> None:
    """`graph`'s MatMul weights to symmetric int8 blocks (`MatMulNBits`), written to `output`."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node it leaves alone
    try:
        config = DefaultWeightOnlyQuantConfig(block_size=INT8_BLOCK_SIZE, is_symmetric=True, bits=8,
                                              op_types_to_quantize=("MatMul",))
        quantizer = MatMulNBitsQuantizer(onnx.load(graph), bits=8, block_size=INT8_BLOCK_SIZE, is_symmetric=True,
                                         nodes_to_exclude=nodes_to_exclude, algo_config=config)
        quantizer.process()
    finally:
        log.setLevel(level)
    quantizer.model.save_model_to_file(output, use_external_data_format=external)


class _Logits(torch.nn.Module):
    """The stock model's logits alone (no cache, no hidden states): the one output of the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
