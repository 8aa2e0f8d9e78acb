"""Stock export: a last-token classifier (suffix, temperature, thresholds) written as the backbone's own
`<Arch>ForSequenceClassification`, loaded in a process that never imports the package, gives our probabilities."""

import json

import numpy as np
import pytest
import torch

from hf_clf_ext import LastTokenClassifierForSequenceClassification, classify_texts
from hf_clf_ext.export import export_stock

from conftest import run_fresh

LONG = " ".join(["the striker scored twice in the final match"] * 30)

STOCK = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
texts = json.loads({texts!r})
model = AutoModelForSequenceClassification.from_pretrained({path!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({path!r})
with torch.no_grad():
    batch = tokenizer(texts, truncation=True, padding=True, return_tensors="pt")
    logits = model(**batch).logits.float()
probabilities = (logits.sigmoid() if {multi} else logits.softmax(-1)).tolist()
classify = pipeline("text-classification", model={path!r}, top_k=None)
piped = [{{r["label"]: r["score"] for r in rows}} for rows in classify(texts, truncation=True)]
print("RESULT", json.dumps({{"type": type(model).__name__, "probabilities": probabilities, "pipeline": piped,
                            "ids": [tokenizer(t, truncation=True)["input_ids"] for t in texts],
                            "package_imported": "hf_clf_ext" in sys.modules}}))
"""


def classifier_with_suffix(lm_dir, tokenizer, multi_label=False, **kwargs):
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        lm_dir, labels=["business", "sport", "tech"], tokenizer=tokenizer,
        problem_type="multi_label_classification" if multi_label else "single_label_classification", **kwargs,
    ).eval()
    model.config.pooling_suffix = "\nLabel:"
    model.config.suffix_token_ids = tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]
    model.config.temperature = 1.7
    if multi_label:
        model.config.decision_thresholds = [0.3, 0.5, 0.6]
    torch.nn.init.normal_(model.score.weight, std=0.5)  # a head that separates the texts
    tokenizer.model_max_length = 24 - len(model.config.suffix_token_ids)
    return model


# rotary and learned positions; tests/last_token/test_backbones.py: all
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_stock_export_reproduces_our_probabilities_without_the_package(tiny_lm_dir, family, tokenizer, texts,
                                                                       multi_label, tmp_path):
    model = classifier_with_suffix(tiny_lm_dir, tokenizer, multi_label)
    texts = texts + [LONG]
    ours = classify_texts(model, tokenizer, texts)
    expected = [list(r["probabilities"].values()) for r in ours]
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    architecture = export_stock(tmp_path / "ours", tmp_path / "stock")

    stock = run_fresh(STOCK.format(texts=json.dumps(texts), path=str(tmp_path / "stock"), multi=multi_label))
    assert not stock["package_imported"]
    assert stock["type"] == architecture and architecture.endswith("ForSequenceClassification")
    assert architecture != "LastTokenClassifierForSequenceClassification"
    np.testing.assert_allclose(stock["probabilities"], expected, atol=2e-5)
    names = list(ours[0]["probabilities"])
    np.testing.assert_allclose([[row[n] for n in names] for row in stock["pipeline"]], expected, atol=2e-5)
    suffix = model.config.suffix_token_ids
    assert all(ids[-len(suffix):] == suffix and len(ids) <= 24 for ids in stock["ids"])
    assert len(stock["ids"][-1]) == 24  # the long text was cut, the suffix kept
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["problem_type"] == model.config.problem_type
    assert config["id2label"] == {"0": "business", "1": "sport", "2": "tech"}
    assert config.get("decision_thresholds") == ([0.3, 0.5, 0.6] if multi_label else None)


def test_with_the_package_a_stock_exports_pipeline_decides_as_the_classifier(tiny_lm_dirs, tokenizer, texts,
                                                                              tmp_path):
    """With the package imported, `pipeline()` on a multi-label stock export names the labels that reach their tuned
    thresholds, and cuts a long text at the trained length without being told, as on the classifier it came from
    (transformers' own pipeline, without the package, gives the top label)."""
    from transformers import pipeline

    from hf_clf_ext import TextClassifier

    model = classifier_with_suffix(tiny_lm_dirs["llama", "pad"], tokenizer, multi_label=True)
    texts = texts + [LONG]
    ordered = np.sort([list(r["probabilities"].values()) for r in classify_texts(model, tokenizer, texts)], axis=0)
    middle = len(texts) // 2  # half the texts reach each threshold, none sits on one (the export rounds otherwise)
    model.config.decision_thresholds = ((ordered[middle - 1] + ordered[middle]) / 2).tolist()
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    export_stock(tmp_path / "ours", tmp_path / "stock")
    expected = [sorted(r["labels"]) for r in classify_texts(model, tokenizer, texts)]
    assert len({tuple(labels) for labels in expected}) > 1  # the thresholds tell the texts apart
    for kind in ("ours", "stock"):
        piped = pipeline("text-classification", model=str(tmp_path / kind))(texts)
        assert [sorted(row["label"] for row in rows) for rows in piped] == expected, kind
        loaded = TextClassifier.from_pretrained(tmp_path / kind).classify(texts)
        assert [sorted(r["labels"]) for r in loaded] == expected, kind


def test_thresholds_set_on_a_loaded_classifier_decide_on_every_engine(tiny_lm_dirs, tokenizer, texts, tmp_path):
    """`TextClassifier.thresholds` set by a user decide the labels in torch as in onnxruntime (torch used to keep
    the config's)."""
    from hf_clf_ext import TextClassifier
    from hf_clf_ext.export import export_onnx

    model = classifier_with_suffix(tiny_lm_dirs["llama", "pad"], tokenizer, multi_label=True)
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    export_onnx(tmp_path / "ours", tmp_path / "onnx")
    torch_path, onnx_path = TextClassifier.from_pretrained(tmp_path / "ours"), TextClassifier.from_pretrained(
        tmp_path / "onnx")
    before = [sorted(r["labels"]) for r in torch_path.classify(texts)]
    probabilities = [list(r["probabilities"].values()) for r in torch_path.classify(texts)]
    ordered = np.sort(probabilities, axis=0)
    middle = len(texts) // 2
    thresholds = ((ordered[middle - 1] + ordered[middle]) / 2).tolist()  # between two texts: no tie to round
    for loaded in (torch_path, onnx_path):
        loaded.thresholds = thresholds
    after = [[sorted(r["labels"]) for r in loaded.classify(texts)] for loaded in (torch_path, onnx_path)]
    assert after[0] == after[1] and after[0] != before
    with pytest.raises(ValueError, match="one per label"):
        torch_path.thresholds = [0.5]


def test_an_export_refused_on_its_tokenizer_writes_nothing(tiny_lm_dirs, tokenizer, tmp_path, monkeypatch):
    """A refusal found while building the tokenizer comes before the weights are written: the folder stays free for
    the retry (the CLI refuses a folder that is not empty)."""
    from hf_clf_ext import export

    model = classifier_with_suffix(tiny_lm_dirs["llama", "pad"], tokenizer)

    def refuse(*args):
        raise ValueError("The tokenizer did not keep the pooling suffix")

    monkeypatch.setattr(export, "append_suffix_to_tokenizer", refuse)
    with pytest.raises(ValueError, match="pooling suffix"):
        export_stock(model, tmp_path / "stock", tokenizer=tokenizer)
    assert not (tmp_path / "stock").exists() or not any((tmp_path / "stock").iterdir())


def test_a_repo_exports_with_its_tokenizer_from_the_same_cache(tiny_lm_dirs, tokenizer, tmp_path):
    """Hub options reach the tokenizer as they reach the weights: a repo found only in the `cache_dir` given (offline)
    exports, its tokenizer's trained length kept."""
    from conftest import publish

    model = classifier_with_suffix(tiny_lm_dirs["llama", "pad"], tokenizer)
    model.save_pretrained(tmp_path / "ours")
    tokenizer.save_pretrained(tmp_path / "ours")
    publish(tmp_path / "ours", "tiny-org/export-me", tmp_path / "hub")
    export_stock("tiny-org/export-me", tmp_path / "stock", cache_dir=str(tmp_path / "hub"), local_files_only=True)
    facts = json.loads((tmp_path / "stock" / "export.json").read_text())
    assert facts["max_length"] == 24  # the text's 24 - suffix tokens, and the suffix


def test_export_refuses_what_a_stock_head_cannot_hold(tiny_lm_dirs, tokenizer, tmp_path):
    lm_dir = tiny_lm_dirs["llama", "pad"]
    with pytest.raises(ValueError, match="bias"):
        export_stock(classifier_with_suffix(lm_dir, tokenizer, head_bias=True), tmp_path / "a", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pooling='mean'"):
        export_stock(classifier_with_suffix(lm_dir, tokenizer, pooling="mean"), tmp_path / "b", tokenizer=tokenizer)
