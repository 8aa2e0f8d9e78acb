"""Batch prediction at scale (hf_clf_ext.batch): every input format gives what `classify` gives, in input order with
ids; a stopped run resumes at its unfinished chunks (with another process count too); parts of another run, an
existing output and empty rows are errors before work is lost; ranks share the chunks; `accelerate launch` with 2
CPU processes writes the same bytes as 1 process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_clf_ext import TextClassifier
from hf_clf_ext.batch import predict_file, run_in_parts
from hf_clf_ext.texts import normalize_text

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "saved_kinds"
MESSY = ["  Shares rose after the results.\n", "The striker scored twice\t", "Parliament passed the bill.",
         "\u00a0New phone released today", "Rates held steady", "A film won the award.", "Markets fell sharply",
         "The match ended in a draw", "Voters went to the polls", "Profits doubled this year", "ok"]


@pytest.fixture
def merged(tmp_path):
    folder = tmp_path / "merged"
    shutil.copytree(FIXTURES / "merged", folder)
    return str(folder)


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write_inputs(folder: Path, texts) -> dict:
    """The same rows as .txt, .jsonl, .csv and .parquet (ids in a column, except in .txt)."""
    import pandas as pd

    ids = [f"doc-{i}" for i in range(len(texts))]
    frame = pd.DataFrame({"key": ids, "text": texts})
    paths = {suffix: folder / f"inputs.{suffix}" for suffix in ("txt", "jsonl", "csv", "parquet")}
    paths["txt"].write_text("".join(text.replace("\n", " ") + "\n\n" for text in texts), encoding="utf-8")
    paths["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in frame.to_dict("records")), encoding="utf-8")
    frame.to_csv(paths["csv"], index=False)
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("kind", ["merged", "tfidf", "instruction"])
def test_every_input_format_gives_what_classify_gives_in_input_order(kind, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(FIXTURES / kind, folder)
    classifier = TextClassifier.from_pretrained(folder)
    method = "score" if kind == "instruction" else None
    texts = [text.replace("\n", " ") for text in MESSY]
    expected = classifier.classify([normalize_text(t) for t in texts], method=method)
    paths = write_inputs(tmp_path, texts)
    for suffix, path in paths.items():
        output = tmp_path / f"predictions-{suffix}.jsonl"
        id_column = None if suffix == "txt" else "key"
        summary = predict_file(classifier, output, input_file=str(path), id_column=id_column, method=method,
                               chunk_size=4, progress=False)
        assert summary["texts"] == len(texts)
        rows = read_lines(output)
        assert [row.pop("id") for row in rows] == (list(range(len(texts))) if suffix == "txt"
                                                     else [f"doc-{i}" for i in range(len(texts))])
        assert [row["label"] for row in rows] == [row["label"] for row in expected], suffix
        got = np.array([[row["probabilities"][n] for n in classifier.labels] for row in rows])
        want = np.array([[row["probabilities"][n] for n in classifier.labels] for row in expected])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert not os.path.exists(f"{output}.parts")  # merged, then removed


def test_a_stopped_run_resumes_at_its_unfinished_chunks(merged, tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join(MESSY * 3), encoding="utf-8")  # 33 texts: chunks of 8 -> 5 parts, the last of 1
    whole = tmp_path / "whole.jsonl"
    predict_file(merged, whole, input_file=str(inputs), chunk_size=8, progress=False)
    classifier = TextClassifier.from_pretrained(merged)
    classify, calls = classifier.classify, []

    def failing(texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return classify(texts, *args, **kwargs)

    classifier.classify = failing
    output = tmp_path / "predictions.jsonl"
    with pytest.raises(KeyboardInterrupt):
        predict_file(classifier, output, input_file=str(inputs), chunk_size=8, progress=False)
    parts = sorted(os.listdir(f"{output}.parts"))
    assert parts == ["header.json", "part-0000000.jsonl", "part-0000001.jsonl"] and not output.exists()
    Path(f"{output}.parts/part-0000002.jsonl.tmp99").write_text('{"id": 16, "lab')  # a write cut by the crash
    calls.clear()
    classifier.classify = lambda texts, *args, **kwargs: (calls.append(len(texts)),
                                                          classify(texts, *args, **kwargs))[1]
    summary = predict_file(classifier, output, input_file=str(inputs), chunk_size=8, progress=False)
    assert summary["resumed"] == 16 and summary["texts"] == 33
    assert calls == [8, 8, 1]  # the two finished chunks were not classified again
    assert output.read_bytes() == whole.read_bytes()
    with pytest.raises(ValueError, match="exists"):  # a finished run's output is not overwritten unasked
        predict_file(classifier, output, input_file=str(inputs), chunk_size=8, progress=False)
    predict_file(classifier, output, input_file=str(inputs), chunk_size=8, progress=False, overwrite=True)
    assert output.read_bytes() == whole.read_bytes()


def test_parts_of_another_run_are_never_merged(merged, tmp_path):
    inputs = tmp_path / "texts.txt"
    inputs.write_text("\n".join(MESSY), encoding="utf-8")
    output = tmp_path / "predictions.jsonl"
    classifier = TextClassifier.from_pretrained(merged)
    classify = classifier.classify
    classifier.classify = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        predict_file(classifier, output, input_file=str(inputs), chunk_size=4, progress=False)
    classifier.classify = classify
    inputs.write_text("\n".join(MESSY[::-1]), encoding="utf-8")  # other texts
    with pytest.raises(ValueError, match="parts of another run .*fingerprint"):
        predict_file(classifier, output, input_file=str(inputs), chunk_size=4, progress=False)
    inputs.write_text("\n".join(MESSY), encoding="utf-8")
    with pytest.raises(ValueError, match="parts of another run .*chunk_size"):
        predict_file(classifier, output, input_file=str(inputs), chunk_size=5, progress=False)
    tfidf = TextClassifier.from_pretrained(shutil.copytree(FIXTURES / "tfidf", tmp_path / "tfidf"))
    with pytest.raises(ValueError, match="parts of another run .*model_fingerprint"):
        predict_file(tfidf, output, input_file=str(inputs), chunk_size=4, progress=False)


def test_bad_rows_are_named_before_the_model_loads(tmp_path):
    inputs = tmp_path / "texts.jsonl"
    inputs.write_text('{"text": "fine"}\n{"text": "  \\n "}\n{"body": "no text column"}\n', encoding="utf-8")
    missing_model = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=r"Row 2 has no column \['text'\]"):
        predict_file(missing_model, tmp_path / "out.jsonl", input_file=str(inputs), progress=False)
    inputs.write_text('{"text": "fine"}\n{"text": " \\t"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"Rows \[1\] have empty text"):
        predict_file(missing_model, tmp_path / "out.jsonl", input_file=str(inputs), progress=False)
    inputs.write_text('{"text": "fine"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2, is a JSON list"):
        predict_file(missing_model, tmp_path / "out.jsonl", input_file=str(inputs), progress=False)
    with pytest.raises(ValueError, match="use a .txt, .jsonl, .csv or .parquet"):
        predict_file(missing_model, tmp_path / "out.jsonl", input_file=str(tmp_path / "texts.xlsx"), progress=False)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.parts").exists()


def test_each_rank_classifies_only_its_chunks_and_the_main_one_merges(tmp_path):
    pairs = [(i, f"text {i}") for i in range(10)]
    seen = {}

    def classify_for(rank):
        def classify_chunk(chunk):
            seen.setdefault(rank, []).extend(i for i, _ in chunk)
            return [json.dumps({"id": i}) for i, _ in chunk]
        return classify_chunk

    output, parts = str(tmp_path / "out.jsonl"), str(tmp_path / "out.jsonl.parts")
    for rank in (1, 0):  # rank 1 first: the main rank merges once every part is there
        run_in_parts(lambda: iter(pairs), classify_for(rank), parts, {"run": 1}, output, total=10, chunk_size=3,
                     progress=False, processes=(rank, 2))
    assert seen == {1: [3, 4, 5, 9], 0: [0, 1, 2, 6, 7, 8]}  # chunks 1 and 3 / 0 and 2
    assert [row["id"] for row in read_lines(output)] == list(range(10))


def test_two_processes_through_accelerate_launch_write_what_one_process_writes(merged, tmp_path):
    inputs = tmp_path / "texts.jsonl"
    inputs.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(MESSY * 5)), "utf-8")
    one = tmp_path / "one.jsonl"
    predict_file(merged, one, input_file=str(inputs), id_column="n", chunk_size=7, progress=False)
    two = tmp_path / "two.jsonl"
    script = tmp_path / "hf_clf.py"  # `hf-clf`, then whether the process group outlived it (it must not)
    script.write_text("import sys\nimport torch.distributed\nfrom hf_clf_ext.cli import main\ncode = main()\n"
                      "sys.stderr.write(f'group after the command: {torch.distributed.is_initialized()}\\n')\n"
                      "sys.exit(code)\n")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), str(script), "predict",
               "--model", merged, "--input_file", str(inputs), "--id_column", "n", "--chunk_size", "7",
               "--output_file", str(two)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["texts"] == 55  # printed once, by the main process
    assert "predict (process 0 of 2)" in done.stderr  # two processes shared the chunks
    assert two.read_bytes() == one.read_bytes()
    assert done.stderr.count("group after the command: False") == 2  # both ended together, the group torn down


def test_an_onnx_export_is_batch_predicted_on_a_machine_with_an_accelerator(merged, tmp_path, monkeypatch):
    """On an accelerator machine each process loads a torch model onto its device; an ONNX export, which onnxruntime
    loads, takes no such option (it was refused, so batch prediction of an export failed wherever a GPU was)."""
    from types import SimpleNamespace

    import torch

    from hf_clf_ext import batch
    from hf_clf_ext.export import export_onnx

    export_onnx(merged, tmp_path / "onnx")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(text.strip() + "\n" for text in MESSY), encoding="utf-8")
    on_gpu = SimpleNamespace(device=torch.device("cuda", 0), process_index=0, num_processes=1,
                             wait_for_everyone=lambda: None)
    monkeypatch.setattr(batch, "process_state", lambda: on_gpu)
    summary = predict_file(str(tmp_path / "onnx"), tmp_path / "out.jsonl", input_file=str(texts))
    assert summary["engine"] == "onnxruntime" and len(read_lines(tmp_path / "out.jsonl")) == len(MESSY)
