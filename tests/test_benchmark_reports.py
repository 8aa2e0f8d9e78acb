"""What the benchmark reports print for a cell of several seeds and of one (benchmarks/baselines.py `mean_std`, the
one formatter quality.md, distill.md and tune.md share), how quality.py's options reach its runs, and how distill.md
keeps the earlier pool's runs apart."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_one_seed_is_reported_without_a_spread_and_several_with_their_sample_std():
    from quality_report import _cell

    letters = {"A": "A"}
    assert _cell([{"f1_macro": 0.9691}], "f1_macro", letters) == "0.969"  # not "0.969 ± 0.000": one run has no spread
    rows = [{"f1_macro": value} for value in (0.80, 0.85, 0.90)]
    assert _cell(rows, "f1_macro", letters) == "0.850 ± 0.050"  # ddof=1, as the tables always said
    # two seeds that agree
    assert _cell([{"f1_macro": 0.9}, {"f1_macro": 0.9}], "f1_macro", letters) == "0.900 ± 0.000"


def test_quality_rows_say_what_their_runs_trained_in(monkeypatch):
    """One config trains under bf16 autocast on a CPU with native bf16 and in float32 elsewhere, with other results:
    a row says which its runs used, how many of each where they differ, and `?` for runs that did not record it; the
    machine's name says whether it has native bf16."""
    import torch
    from baselines import machine, precision
    from quality_report import _precision, machine_letters
    from transformers import TrainingArguments

    def runs(*kinds, method="last_token"):
        return [{"method": method, **({"precision": kind} if kind else {})} for kind in kinds]

    assert _precision(runs("bf16 autocast", "bf16 autocast")) == "bf16"
    assert _precision(runs("float32", "bf16 autocast", None)) == "? x1, bf16 x1, float32 x1"
    assert _precision(runs(None, None, None)) == "?"
    assert _precision(runs(None, method="tfidf")) == "-"
    assert _precision(runs(None, "float32", method="minilm_lr")) == "float32"  # its code computes in float32
    assert precision(TrainingArguments("out", use_cpu=True)) == "float32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ", no native bf16, " in machine()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert ", native bf16, " in machine()
    # A machine named with its capability takes the next letter: the earlier machines keep the ones the docs cite.
    earlier = [{"machine": "AMD EPYC (x86_64), 2 threads, torch 2.13.0+cpu"},
               {"machine": "x86_64 (CPU model not recorded), 2 threads, torch 2.13.0+cpu"}]
    assert machine_letters(earlier + [{"machine": machine()}]) == {**machine_letters(earlier), machine(): "C"}


def test_another_backbone_and_config_values_reach_the_instruction_recipe_and_name_its_rows(tmp_path, monkeypatch):
    """`--model` / `--set` run the instruction method on another backbone with other config values (as they do
    `last_token`): its recipe config reads them, and its rows are kept and named apart from the default's."""
    import json

    import quality
    import quality_report
    from hf_clf_ext import jobs
    from hf_clf_ext.instruction.config import InstructionConfig

    script, args = jobs.parse_config(InstructionConfig, [
        "--config", str(quality.INSTRUCTION_CONFIG), "--output_dir", str(tmp_path / "out"),
        *quality._options("bundled:gemma3-270m", "lora_r=16 num_train_epochs=3")])
    assert (script.model_name_or_path, args.lora_r, args.num_train_epochs) == ("bundled:gemma3-270m", 16, 3)

    given = {}

    def fake_instruction(task, splits, seed, workdir, **options):
        given.update(options)
        return [{"variant": method, "f1_macro": 0.5} for method in ("generate", "score")]

    monkeypatch.setattr(quality, "RUNS", tmp_path / "runs.jsonl")
    monkeypatch.setitem(quality.RUNNERS, "instruction", fake_instruction)
    monkeypatch.setattr(quality.Task, "splits", lambda self, size, seed: {})
    task = quality.TASKS["bbc_headlines"]
    quality.run(task, ["instruction"], [100], [0], model="bundled:gemma3-270m", overrides="lora_r=16")
    assert given == {"model": "bundled:gemma3-270m", "overrides": "lora_r=16"}
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert sorted(quality_report._groups(rows, task)) == [
        (100, "instruction (generate) (bundled:gemma3-270m) (lora_r=16)"),
        (100, "instruction (score) (bundled:gemma3-270m) (lora_r=16)")]
    with pytest.raises(SystemExit, match="--max-length applies to the last_token method only"):
        quality.run(task, ["instruction"], [100], [0], max_length=64)


def test_a_head_c_reaches_setfits_own_head_and_names_its_rows(tmp_path, monkeypatch):
    """`--head-c` gives SetFit's logistic head the C it names (SetFit's default, scikit-learn's C=1, without it; the
    one-vs-rest head of multi-label data keeps its balanced classes), and those rows are kept and named apart."""
    import json
    import types

    import quality
    import quality_report
    from sklearn.linear_model import LogisticRegression

    from hf_clf_ext import bundled

    given = []

    class Stop(Exception):
        pass

    class SetFitModel:
        @staticmethod
        def from_pretrained(path, multi_target_strategy=None, head_params=None):
            given.append((multi_target_strategy, head_params))
            raise Stop  # the head is what this test reads: no contrastive training

    monkeypatch.setitem(sys.modules, "setfit", types.SimpleNamespace(SetFitModel=SetFitModel, Trainer=None,
                                                                     TrainingArguments=None))
    monkeypatch.setattr(bundled, "minilm_model_dir", lambda: "minilm")
    reuters = quality.TASKS["reuters"]
    monkeypatch.setattr(quality.Task, "label_names", lambda self, splits: ["earn", "acq"])
    for head_c in (None, 10.0):
        with pytest.raises(Stop):
            quality.run_setfit(reuters, {}, 0, str(tmp_path), head_c=head_c)
    (default_strategy, default_head), (strategy, head) = given
    assert default_strategy == strategy == "one-vs-rest"
    assert default_head == {"class_weight": "balanced", "max_iter": 5000}
    assert head == {**default_head, "C": 10.0}
    assert (LogisticRegression(**default_head).C, LogisticRegression(**head).C) == (1.0, 10.0)

    monkeypatch.setattr(quality, "RUNS", tmp_path / "runs.jsonl")
    monkeypatch.setitem(quality.RUNNERS, "setfit", lambda *args, **options: {"f1_macro": 0.5, "options": options})
    monkeypatch.setattr(quality.Task, "splits", lambda self, size, seed: {})
    quality.run(reuters, ["setfit"], [400], [0], head_c=10.0)
    quality.run(reuters, ["setfit"], [400], [0])
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [row["options"] for row in rows] == [{"head_c": 10.0}, {}]
    assert sorted(quality_report._groups(rows, reuters)) == [(400, "setfit"), (400, "setfit (C=10)")]
    with pytest.raises(SystemExit, match="--head-c applies to the tfidf, minilm_lr and setfit methods only"):
        quality.run(reuters, ["last_token"], [400], [0], head_c=10.0)


def test_distill_report_keeps_runs_on_the_earlier_pool_apart(tmp_path, monkeypatch):
    """Runs distilled from the earlier bundled pool (1,680 articles, which held the validation articles that select and
    calibrate a student) are not averaged with today's (1,531): they get a section of their own, and the targets and
    the teacher's row come from today's runs alone."""
    import json

    import distill

    def run(student, seed, pool_size, f1, teacher_f1):
        return {"student": student, "seed": seed, "extra": [], "pool_size": pool_size, "machine": "test machine",
                "teacher_test_f1_macro": teacher_f1, "teacher_test_accuracy": teacher_f1, "teacher_test_ece": 0.03,
                "test_f1_macro": f1, "test_accuracy": f1, "test_ece": 0.02, "test_agreement": 0.97,
                "train_seconds": 10.0, "student_parameters": 1000, "student_temperature": 1.0}

    runs = [run("minilm", 0, 1680, 0.95, 0.976), run("tfidf", 0, 1531, 0.969, 0.960),
            run("minilm", 1, 1680, 0.97, 0.976), run("minilm", 0, 1531, 0.961, 0.960)]
    for row in runs[1::2]:  # today's runs record what each model trained in; the earlier ones did not
        row.update(precision="float32" if row["student"] == "minilm" else "-", teacher_precision="bf16 autocast")
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in runs))
    monkeypatch.setattr(distill, "RUNS", tmp_path / "runs.jsonl")
    monkeypatch.setattr(distill, "RESULTS", tmp_path)
    monkeypatch.setattr(distill, "THROUGHPUT", tmp_path / "none.json")
    monkeypatch.setattr(distill, "pool_agreement", lambda: {"pool": 1531, "agreement": 0.95})
    distill.report()
    today, earlier = (tmp_path / "distill.md").read_text().split("## Earlier runs, on a 1,680-article pool")
    assert "| teacher (main job) | 1 | bf16 autocast | 0.960 |" in today and "- minilm: seed 0: 0.9610\n" in today
    assert "trained in bf16 autocast." in today and "| 1 | - | 0.969 |" in today
    assert "| 1 | float32 | 0.961 |" in today and \
        "MiniLM student >= 0.98 x the teacher at >= 10x: macro-F1 1.001 x" in today
    assert "| teacher (main job) | 1 | ? | 0.976 |" in earlier and "| 2 | ? | 0.960 ± 0.014 |" in earlier and \
        "- minilm: seed 0: 0.9500, seed 1: 0.9700" in earlier
    assert "0.960 ± 0.014" in earlier and "tfidf" not in earlier
