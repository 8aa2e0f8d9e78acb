"""ONNX export and the onnxruntime engine (hf_clf_ext.export.export_onnx, hf_clf_ext.engines.onnxruntime_engine):
float32 gives the eager classifier's probabilities on several families, int8 stays close and names the same labels
where eager's are not near a tie, the folder runs in a process that imports neither hf_clf_ext nor torch (the card's
own snippet), and the CLI exports and predicts with it."""

import json
import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from transformers import (AddedToken, AutoModelForCausalLM, AutoTokenizer, BertConfig,
                          BertForSequenceClassification)

from hf_clf_ext import LastTokenClassifierForSequenceClassification, TextClassifier
from hf_clf_ext.export import export_onnx

LABELS = ["business", "entertainment", "sport"]
MESSY = ["  Shares rose after the results.\n", "the striker scored twice\t", "\u00a0Parliament passed the bill.",
         "a film won an award at the festival in the old city by the river", "ok",
         "Markets fell sharply as rates rose " * 12]
INT8_TOLERANCE = 0.03  # |Δp| allowed to int8 against float32 on these tiny models


def make_classifier(folder, lm_dir, problem_type="single_label_classification", seed=0):
    """A last-token classifier as a merged save holds it: pooling suffix, temperature 1.5, and a head scaled up so
    that its probabilities spread (a near-uniform head would hide a wrong pooling position)."""
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    torch.manual_seed(seed)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        lm_dir, labels=LABELS, tokenizer=tokenizer, problem_type=problem_type)
    model.config.pooling_suffix = "\nLabel:"
    model.config.suffix_token_ids = tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]
    model.config.temperature = 1.5
    if problem_type == "multi_label_classification":
        model.config.decision_thresholds = [0.3, 0.5, 0.7]
    with torch.no_grad():
        model.score.weight.normal_(0, 2.0 / model.score.weight.shape[1] ** 0.5)
    model.save_pretrained(folder)
    tokenizer.model_max_length = 40
    tokenizer.save_pretrained(folder)
    return folder


def probabilities(results, labels=LABELS) -> np.ndarray:
    return np.array([[result["probabilities"][name] for name in labels] for result in results])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_lm_dirs):
    """The llama classifier (single- and multi-label) exported in float32 and int8."""
    folder = tmp_path_factory.mktemp("onnx")
    made = {}
    for kind, problem in (("single", "single_label_classification"), ("multi", "multi_label_classification")):
        source = make_classifier(folder / kind, tiny_lm_dirs["llama", "pad"], problem)
        made[kind] = source
        for quantize in (None, "int8"):
            made[kind, quantize] = folder / f"{kind}_{quantize or 'float32'}"
            export_onnx(source, made[kind, quantize], quantize=quantize)
    return made


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gpt2"])
def test_onnx_float32_gives_the_eager_probabilities(family, tiny_lm_dirs, tmp_path):
    source = make_classifier(tmp_path / "source", tiny_lm_dirs[family, "pad"])
    facts = export_onnx(source, tmp_path / "onnx")
    assert facts["architecture"].endswith("ForSequenceClassification") and facts["quantization"] is None
    eager = TextClassifier.from_pretrained(source).classify(MESSY)
    served = TextClassifier.from_pretrained(tmp_path / "onnx")
    assert served.engine_name == "onnxruntime" and served.labels == LABELS
    for batch_size in (1, 4):  # padded batches of several lengths, and none
        results = served.classify(MESSY, batch_size=batch_size)
        np.testing.assert_allclose(probabilities(results), probabilities(eager), atol=1e-5)
        assert [r["label"] for r in results] == [r["label"] for r in eager]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_int8_stays_close_and_names_the_same_labels(kind, exported):
    eager = TextClassifier.from_pretrained(exported[kind]).classify(MESSY)
    float32 = TextClassifier.from_pretrained(exported[kind, None]).classify(MESSY)
    int8 = TextClassifier.from_pretrained(exported[kind, "int8"]).classify(MESSY)
    np.testing.assert_allclose(probabilities(float32), probabilities(eager), atol=1e-5)
    difference = np.abs(probabilities(int8) - probabilities(eager))
    assert 0 < difference.max() <= INT8_TOLERANCE  # quantized (it differs), and close
    p = probabilities(eager)
    if kind == "single":
        top = np.sort(p, axis=1)
        clear = top[:, -1] - top[:, -2] > 2 * INT8_TOLERANCE
        assert clear.sum() >= 3
        assert [r["label"] for r, c in zip(int8, clear) if c] == [r["label"] for r, c in zip(eager, clear) if c]
    else:  # the saved thresholds decide, as in eager
        assert [r["labels"] for r in float32] == [r["labels"] for r in eager]
        clear = (np.abs(p - np.array([0.3, 0.5, 0.7])) > 2 * INT8_TOLERANCE).all(axis=1)
        assert [r["labels"] for r, c in zip(int8, clear) if c] == [r["labels"] for r, c in zip(eager, clear) if c]
    facts = json.loads((exported[kind, "int8"] / "onnx.json").read_text())
    assert facts["quantization"] == "int8"
    graph = onnx.load(exported[kind, None] / "model.onnx").graph
    weights = {tensor.name for tensor in graph.initializer}
    weight_matmuls = sum(node.op_type == "MatMul" and bool(weights & set(node.input)) for node in graph.node)
    ops = Counter(node.op_type for node in onnx.load(exported[kind, "int8"] / "model.onnx").graph.node)
    matmuls = sum(node.op_type == "MatMul" for node in graph.node)
    assert ops["MatMulNBits"] == weight_matmuls > 0  # every weight product, as int8 blocks
    assert ops["MatMul"] == matmuls - weight_matmuls  # attention's products of activations stay float32


def run_card_snippet(folder, texts) -> np.ndarray:
    """The probabilities the code in the folder's card prints for `texts`, run as it stands in a fresh process that
    imports neither hf_clf_ext nor torch."""
    card = (folder / "README.md").read_text()
    snippet = re.search(r"## With onnxruntime and tokenizers alone\n\n```python\n(.*?)```", card, re.S).group(1)
    assert f'folder = "{folder}"' in snippet
    code = (f"{snippet}\nTEXTS = {texts!r}\nprint('RESULT', json.dumps(probabilities(TEXTS).tolist()))\n"
            "import sys\nassert 'hf_clf_ext' not in sys.modules and 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=folder, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.split("RESULT", 1)[1].strip().splitlines()[0]))


def test_the_card_snippet_runs_without_the_package_or_torch(exported):
    """The folder's README holds the code that runs it with onnxruntime and tokenizers alone: run as it stands, in a
    fresh process, it prints the probabilities TextClassifier gives (multi-label: sigmoid, thresholds in onnx.json)."""
    folder = exported["multi", None]
    expected = probabilities(TextClassifier.from_pretrained(folder).classify(MESSY))
    np.testing.assert_allclose(run_card_snippet(folder, MESSY), expected, atol=1e-6)
    facts = json.loads((folder / "onnx.json").read_text())
    assert facts["activation"] == "sigmoid" and facts["decision_thresholds"] == [0.3, 0.5, 0.7]


def test_a_tokenizer_that_cannot_strip_line_breaks_gets_a_card_that_strips_texts(tmp_path, tiny_lm_dirs, caplog):
    """Gemma 3's tokenizer splits runs of line breaks off as added tokens before its normalizer runs, so the exported
    tokenizer.json cannot strip them at the ends of a text: onnx.json and the card say so, and the card's code strips
    texts itself (of the package's White_Space set, not `str.strip()`'s), giving the package's probabilities for texts
    that end in line breaks."""
    lm = tmp_path / "lm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dirs["llama", "pad"])
    tokenizer.add_tokens([AddedToken("\n" * n, normalized=False) for n in (1, 2)])  # as Gemma 3's
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(lm)
    tokenizer.save_pretrained(lm)
    source = make_classifier(tmp_path / "source", lm)
    facts = export_onnx(source, tmp_path / "onnx")
    assert facts["strips_texts"] is False
    assert "does not strip those at the ends of a text" in caplog.text  # the trainer's user is told too
    assert "strip texts\nbefore encoding them" in (tmp_path / "onnx" / "README.md").read_text()
    # and strips what the package strips: U+001C ends the last text, a separator str.strip() would have removed
    texts = ["Shares rose after the results.\n", "\n\nthe striker scored twice \n", "ok\n\n", "rates cut\x1c\n"]
    expected = probabilities(TextClassifier.from_pretrained(source).classify(texts))
    np.testing.assert_allclose(run_card_snippet(tmp_path / "onnx", texts), expected, atol=1e-5)


def test_a_sequence_classification_student_exports_too(tmp_path, tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dirs["pad"])
    tokenizer.model_max_length = 32
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=tokenizer.pad_token_id, num_labels=3,
                        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    export_onnx(tmp_path / "student", tmp_path / "onnx")
    eager = TextClassifier.from_pretrained(tmp_path / "student").classify(MESSY)
    served = TextClassifier.from_pretrained(tmp_path / "onnx").classify(MESSY, batch_size=4)
    np.testing.assert_allclose(probabilities(served), probabilities(eager), atol=1e-5)


def test_the_cli_exports_quantizes_and_predicts(exported, tmp_path):
    source = exported["single"]
    run = lambda *args: subprocess.run([sys.executable, "-m", "hf_clf_cli", *map(str, args)],  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    done = run("export", "--model", source, "--output", tmp_path / "int8", "--format", "onnx", "--quantize", "int8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["quantization"] == "int8"
    inputs = tmp_path / "texts.txt"
    inputs.write_text("".join(t.replace("\n", " ") + "\n" for t in MESSY), encoding="utf-8")
    done = run("predict", "--model", tmp_path / "int8", "--input_file", inputs, "--output_file",
               tmp_path / "out.jsonl")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["engine"] == "onnxruntime"
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = TextClassifier.from_pretrained(exported["single", "int8"]).classify([t.replace("\n", " ")
                                                                                   for t in MESSY])
    np.testing.assert_allclose(probabilities(written), probabilities(expected), atol=1e-6)
    done = run("export", "--model", source, "--output", tmp_path / "stock", "--quantize", "int8")
    assert done.returncode == 1 and "--quantize applies to --format onnx" in done.stderr


def test_what_cannot_be_exported_or_run_is_refused(exported, tmp_path):
    from pathlib import Path

    fixtures = Path(__file__).resolve().parent / "fixtures" / "saved_kinds"
    for kind in ("instruction", "tfidf"):
        with pytest.raises(ValueError, match=f"is an? {kind} classifier: the ONNX export takes"):
            export_onnx(fixtures / kind, tmp_path / kind)
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(exported["single"], tmp_path / "int4", quantize="int4")
    with pytest.raises(ValueError, match="is not empty"):
        export_onnx(exported["single"], exported["single", None])
    with pytest.raises(ValueError, match="is an ONNX export: it runs on onnxruntime"):
        TextClassifier.from_pretrained(exported["single", None], engine="torch")
    with pytest.raises(ValueError, match="export it first"):
        TextClassifier.from_pretrained(exported["single"], engine="onnxruntime")
    with pytest.raises(ValueError, match="model loading options \\(dtype\\) do not apply"):
        TextClassifier.from_pretrained(exported["single", None], dtype=torch.float16)
