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

from hf_clf_ext import LastTokenClassifierForSequenceClassification, TextClassifier, classify_texts
from hf_clf_ext.last_token import compiled as compiled_module
from hf_clf_ext.last_token import trainer as last_token_trainer
from hf_clf_ext.last_token.compiled import BUCKET_TOKENS, compile_pays, compiled_forward
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
        assert c["probabilities"] == pytest.approx(e["probabilities"], abs=1e-5)


def test_compiled_predictions_equal_eager_and_reuse_their_graphs(saved):
    model = LastTokenClassifierForSequenceClassification.from_pretrained(saved).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved)
    texts = _texts(37, seed=0)  # 37 = 4 full batches of 8 and a short one, lengths from 1 to ~120 tokens
    eager = classify_texts(model, tokenizer, texts, batch_size=8, compile=False)
    assert compiled_module._ATTRIBUTE not in model.__dict__  # eager never builds the compiled forward
    before = _graphs()
    _assert_same(classify_texts(model, tokenizer, texts, batch_size=8, compile=True), eager)
    stats = compiled_forward(model).stats
    lengths = {shape[1] for shape in stats.shapes}
    assert {shape[0] for shape in stats.shapes} == {8}  # the short batch ran as a full one
    assert all(length % BUCKET_TOKENS == 0 for length in lengths) and stats.batches == 5
    compiled_graphs = _graphs() - before
    assert 1 <= compiled_graphs <= 2, compiled_graphs  # dynamic shapes: one graph, at most one re-specialisation
    # Other texts, other lengths: the compiled graphs are reused, nothing is compiled again.
    others = _texts(19, seed=1)
    again = classify_texts(model, tokenizer, others, batch_size=8, compile=True)
    assert _graphs() - before == compiled_graphs
    _assert_same(again, classify_texts(model, tokenizer, others, batch_size=8, compile=False))
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
    from hf_clf_ext.distillation.tfidf import TfidfClassifier

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


# --- training with Trainer's torch_compile ---------------------------------------------------------------------------

LONG_PREFIX = "the of and in after while as for its new over despite weak growth season holiday well " * 3


def _fixed_length(dataset):
    """Texts longer than max_length, cut from the start: every batch has one shape, so one graph is compiled."""
    return dataset.map(lambda row: {"text": LONG_PREFIX + row["text"]})


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _train_twice(build):
    """The same short run eager and with `torch_compile=True`: the compiled run must learn the same thing."""
    eager = build(torch_compile=False)
    eager.train()
    before = _graphs()
    compiled = build(torch_compile=True)
    compiled.train()
    assert _graphs() > before  # it did run compiled
    assert type(compiled.model_wrapped).__name__ == "OptimizedModule"
    # The same loss before any update; afterwards float rounding of the fused kernels compounds a little per step.
    got, want = _losses(compiled), _losses(eager)
    assert len(got) == len(want) == 4 and got[0] == pytest.approx(want[0], rel=1e-5), (got, want)
    assert got == pytest.approx(want, rel=1e-2), (got, want)
    return eager, compiled


def test_last_token_trainer_trains_compiled_like_eager(tiny_lm_dirs, tokenizer, tmp_path, monkeypatch):
    from testing_utils import make_trainer, synthetic

    def build(torch_compile):
        return make_trainer(tiny_lm_dirs["llama", "pad"], tokenizer, tmp_path / str(torch_compile),
                            train=_fixed_length(synthetic(48, seed=1)), max_length=24, truncation_side="left",
                            max_steps=4, logging_steps=1, eval_strategy="no", save_strategy="no",
                            load_best_model_at_end=False, calibrate=False, torch_compile=torch_compile)

    _, compiled = _train_twice(build)
    texts = _texts(6, seed=3)
    asked = []
    monkeypatch.setattr(last_token_trainer, "classify_texts", lambda *a, **k: asked.append(k["compile"]) or [])
    compiled.classify(texts)
    assert asked == [True]  # a trainer that trains compiled predicts compiled (checked in the tests above)
    monkeypatch.undo()
    expected = compiled.classify(texts, compile=False)
    compiled.save_model()
    loaded = TextClassifier.from_pretrained(compiled.args.output_dir)  # no "_orig_mod." prefixes in the save
    _assert_same(loaded.classify(texts), expected)


def test_instruction_recipe_trains_compiled_like_eager(tiny_lm_dirs, tokenizer, tmp_path):
    from testing_utils import instruction_trainer as recipe
    from testing_utils import synthetic

    def build(torch_compile):
        return recipe(tiny_lm_dirs["llama", "pad"], tokenizer, tmp_path / str(torch_compile),
                      train=_fixed_length(synthetic(48, seed=1)), max_length=96, max_steps=4, logging_steps=1,
                      torch_compile=torch_compile)

    _, compiled = _train_twice(build)
    compiled.save_model()
    texts = _texts(4, seed=4)
    expected = compiled.classifier.classify(texts, method="score")
    loaded = TextClassifier.from_pretrained(compiled.args.output_dir).classify(texts, method="score")
    for got, want in zip(loaded, expected):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
