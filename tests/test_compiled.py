"""The compiled inference path: results equal eager ones, bucketed shapes reuse compiled graphs, the loader and the
CLI pass `compile` through, and `compile=None` compiles only where it pays."""

import json
import random
import subprocess
import sys

import pytest
import torch
import torch._dynamo.utils
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_clf_ext import LastTokenClassifierForSequenceClassification, TextClassifier, predict_texts
from hf_clf_ext import compiled as compiled_module
from hf_clf_ext.compiled import BUCKET_TOKENS, compile_pays, compiled_forward
from hf_clf_ext.export import export_stock

from conftest import WORDS

LABELS = ["business", "sport", "tech"]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 90))) for _ in range(n)]


@pytest.fixture(scope="module")
def saved(tiny_lm_dirs, tmp_path_factory):
    """A tiny Llama classifier with a pooling suffix, saved as users save one."""
    path = tiny_lm_dirs["llama", "pad"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(str(path), labels=LABELS, tokenizer=tokenizer)
    model.config.suffix_token_ids = tokenizer(" the", add_special_tokens=False)["input_ids"]
    folder = tmp_path_factory.mktemp("compiled_classifier")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _assert_same(compiled: list[dict], eager: list[dict]):
    assert [r["label"] for r in compiled] == [r["label"] for r in eager]
    for c, e in zip(compiled, eager):
        for name in LABELS:
            assert c["probabilities"][name] == pytest.approx(e["probabilities"][name], abs=1e-5)


def test_compiled_predictions_equal_eager_and_reuse_their_graphs(saved):
    model = LastTokenClassifierForSequenceClassification.from_pretrained(saved).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved)
    texts = _texts(37, seed=0)  # 37 = 4 full batches of 8 and a short one, lengths from 1 to ~120 tokens
    eager = predict_texts(model, tokenizer, texts, batch_size=8, compile=False)
    assert compiled_module._ATTRIBUTE not in model.__dict__  # eager never builds the compiled forward
    before = _graphs()
    _assert_same(predict_texts(model, tokenizer, texts, batch_size=8, compile=True), eager)
    stats = compiled_forward(model).stats
    lengths = {shape[1] for shape in stats.shapes}
    assert {shape[0] for shape in stats.shapes} == {8}  # the short batch ran as a full one
    assert all(length % BUCKET_TOKENS == 0 for length in lengths) and stats.batches == 5
    compiled_graphs = _graphs() - before
    assert 1 <= compiled_graphs <= 2, compiled_graphs  # dynamic shapes: one graph, at most one re-specialisation
    # Other texts, other lengths: the compiled graphs are reused, nothing is compiled again.
    others = _texts(19, seed=1)
    again = predict_texts(model, tokenizer, others, batch_size=8, compile=True)
    assert _graphs() - before == compiled_graphs
    _assert_same(again, predict_texts(model, tokenizer, others, batch_size=8, compile=False))
    assert "compiled forward" in str(stats) and stats.batches == 8
    assert "_hf_clf_compiled" not in "".join(model.state_dict())  # the compiled module is not saved with the model


def test_loader_and_cli_compile_a_stock_export(saved, tmp_path):
    """A stock export (its tokenizer pads right, positions count from the first token) compiles the same way; the
    CLI says what compiling cost."""
    export_stock(str(saved), str(tmp_path / "stock"))
    texts = _texts(12, seed=2)
    classifier = TextClassifier.from_pretrained(tmp_path / "stock", compile=True)
    assert classifier.compile is True
    eager = TextClassifier.from_pretrained(tmp_path / "stock").classify(texts, batch_size=4, compile=False)
    _assert_same(classifier.classify(texts, batch_size=4), eager)
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock")
    assert type(classifier.model) is type(stock)
    done = subprocess.run([sys.executable, "-m", "hf_clf_ext.cli", "predict", "--model", str(tmp_path / "stock"),
                           "--compile", "--batch_size", "4", *texts[:5]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["label"] for row in printed] == [row["label"] for row in eager[:5]]
    assert "compiled forward: " in done.stderr


def test_compile_is_refused_where_there_is_no_compiled_path(tmp_path):
    from hf_clf_ext.tfidf import TfidfClassifier

    student = TfidfClassifier.fit(["shares rose", "the striker scored"], [[1.0, 0.0], [0.0, 1.0]], ["a", "b"], False)
    student.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="compile"):
        TextClassifier.from_pretrained(tmp_path, compile=True)


def test_compile_by_default_only_for_long_jobs_where_it_pays(saved, monkeypatch):
    model = LastTokenClassifierForSequenceClassification.from_pretrained(saved)
    many = compiled_module.COMPILE_MIN_TEXTS
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert not compile_pays(model, many)  # float32 weights: the products already run near the CPU's rate
    model.to(torch.bfloat16)
    assert compile_pays(model, many)
    assert not compile_pays(model, many - 1)  # a short job: compiling costs more than it saves
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert not compile_pays(model, many)  # no native bf16: compiled or not, bf16 products are emulated
