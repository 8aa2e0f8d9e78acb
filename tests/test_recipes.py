"""Recipes, the `hf-clf` CLI and 2-process CPU training through `accelerate launch`, on tiny models and CSV data."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transformers import AutoModelForSequenceClassification

from hf_clf_ext import InstructionClassifier, cli, jobs
from hf_clf_ext.last_token.config import LastTokenConfig

from testing_utils import NO_SUCH_MODEL, ROOT, recipe, write_config  # noqa: F401


# --- bad input, before any model loads ---------------------------------------------------------------------------

CPU_CONFIGS = sorted(path.name for path in (ROOT / "recipes" / "configs").glob("*.yaml")
                     if yaml.safe_load(path.read_text()).get("use_cpu"))


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_every_cpu_config_passes_its_recipes_checks_as_its_header_launches_it(name, tmp_path):
    """Each embedded (CPU) config names its launch command in its header; that recipe's checks before a model loads
    (keys, bundled names, data, columns) accept it, so a config that ships cannot fail on its first line."""
    import re

    from hf_clf_ext.instruction.config import InstructionConfig

    path = ROOT / "recipes" / "configs" / name
    launch = re.search(rf"python (recipes/\w+\.py) --config recipes/configs/{re.escape(name)}\b", path.read_text())
    assert launch, f"{name}: its header does not say how to launch it"
    argv = ["--config", str(path), "--output_dir", str(tmp_path / "run")]
    recipe_name = Path(launch.group(1)).stem
    if recipe_name == "distill":
        _, _, splits, pool = jobs.prepare_distillation(argv)
        assert len(pool) > 0
    else:
        config_class = {"train_last_token": LastTokenConfig, "train_instruction": InstructionConfig}[recipe_name]
        _, _, splits = jobs.prepare(config_class, argv)
    assert min(len(split) for split in splits.values()) > 0


def test_unknown_config_keys_are_rejected(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, learning_rat=1.0)
    with pytest.raises(jobs.JobError, match="learning_rat"):
        jobs.prepare(LastTokenConfig, ["--config", str(config)])
    with pytest.raises(jobs.JobError, match="unknown configuration keys.*'colour'"):
        jobs.prepare(LastTokenConfig, ["--config", str(write_config(tmp_path, NO_SUCH_MODEL, data_files)),
                                       "--colour", "red"])


def test_missing_required_keys_are_named(tmp_path, data_files, capsys):
    config = yaml.safe_load(write_config(tmp_path, NO_SUCH_MODEL, data_files).read_text())
    del config["model_name_or_path"]
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit):
        recipe("train_last_token").main(["--config", str(path)])
    assert "model_name_or_path" in capsys.readouterr().err


def test_unreadable_data_files_are_rejected(tmp_path, data_files):
    missing = dict(data_files, train=tmp_path / "nope.csv")
    with pytest.raises(SystemExit, match="cannot read .*nope.csv: no such readable file"):
        recipe("train_last_token").main(["--config", str(write_config(tmp_path, NO_SUCH_MODEL, missing))])
    broken = tmp_path / "broken.parquet"
    broken.write_text("this is not parquet")
    with pytest.raises(SystemExit, match="cannot read .*broken.parquet as parquet"):
        recipe("train_last_token").main(["--config", str(write_config(tmp_path, NO_SUCH_MODEL,
                                                                      dict(data_files, train=broken)))])
    with pytest.raises(SystemExit, match="use a .csv, .json, .jsonl or .parquet file"):
        recipe("train_last_token").main(["--config", str(write_config(tmp_path, NO_SUCH_MODEL,
                                                                      dict(data_files, train=tmp_path / "x.xlsx")))])


def test_a_missing_label_column_is_named(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, approach="instruction", label_column="topic")
    with pytest.raises(SystemExit, match="The train data has no column 'topic'"):
        recipe("train_instruction").main(["--config", str(config)])


def test_an_output_folder_holding_another_model_is_not_overwritten(tmp_path, data_files, tiny_lm_dirs):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    shutil.copytree(tiny_lm_dirs["qwen2", "pad"], output)
    with pytest.raises(SystemExit, match=r"already holds a saved model \(qwen2 from .*\).*--overwrite_output_dir"):
        recipe("train_last_token").main(["--config", str(config)])


# --- end to end ---------------------------------------------------------------------------------------------------


def test_last_token_recipe_then_cli_evaluate_and_predict(tmp_path, data_files, tiny_lm_dirs, capsys):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files)
    results = recipe("train_last_token").main(["--config", str(config), "--num_train_epochs", "3"])
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    printed = capsys.readouterr().out
    assert "test_f1_macro" in printed and "AutoModelForSequenceClassification.from_pretrained" in printed
    assert "TextClassifier.from_pretrained" in printed
    assert (output / "README.md").exists() and (output / "model.safetensors").exists()  # a local base: merged
    card = (output / "README.md").read_text()
    test_rows = sum(1 for _ in open(data_files["test"])) - 1
    assert f"held-out test split of {tmp_path.name} ({test_rows} examples)" in card  # what the job measured
    assert json.loads((output / jobs.RESULTS_FILE).read_text())["test_f1_macro"] == results["test_f1_macro"]

    assert cli.main(["evaluate", "--model", str(output), "--file", str(data_files["test"])]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["examples"] == 24
    assert evaluated["f1_macro"] == pytest.approx(results["test_f1_macro"], abs=1e-6)

    assert cli.main(["predict", "--model", str(output), "the market rose", "a striker scored"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["the market rose", "a striker scored"]
    assert all(line["label"] in ("business", "entertainment", "sport") for line in lines)

    assert cli.main(["export", "--model", str(output), "--output", str(tmp_path / "stock")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForSequenceClassification"
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock")
    assert type(stock).__name__ == "LlamaForSequenceClassification"
    with pytest.raises(SystemExit, match="not empty"):
        cli.main(["export", "--model", str(output), "--output", str(tmp_path / "stock")])


def test_instruction_recipe_and_cli_predict_from_stdin(tmp_path, data_files, tiny_lm_dirs, capsys, monkeypatch):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, approach="instruction")
    results = recipe("train_instruction").main(["--config", str(config)])
    assert {"test_f1_macro_generate", "test_ece_score"} <= set(results)
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    capsys.readouterr()
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("the market rose\n\na film award\n"))
    assert cli.main(["predict", "--model", str(output), "--method", "score"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and all(abs(sum(line["probabilities"].values()) - 1) < 1e-5 for line in lines)

    assert cli.main(["export", "--model", str(output), "--output", str(tmp_path / "merged")]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForCausalLM"
    exported = InstructionClassifier.from_pretrained(tmp_path / "merged")
    assert type(exported.model).__name__ == "LlamaForCausalLM"  # merged: no adapter left
    texts = ["the market rose", "a film award"]
    assert exported.classify(texts) == InstructionClassifier.from_pretrained(output).classify(texts)


def test_cli_train_uses_the_same_configs(tmp_path, data_files, tiny_lm_dirs, capsys):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, num_train_epochs=1)
    assert cli.main(["train", "--approach", "last_token", "--config", str(config)]) == 0
    assert "Saved to" in capsys.readouterr().out


# --- distributed --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("approach", ["last_token", "instruction"])
def test_two_cpu_processes_through_accelerate_launch(tmp_path, data_files, tiny_lm_dirs, approach, capsys):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, approach=approach)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), str(ROOT / "recipes" / f"train_{approach}.py"),
        "--config", str(config),
    ]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-8000:]
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    results = json.loads((output / jobs.RESULTS_FILE).read_text())
    assert results["world_size"] == 2
    suffix = "" if approach == "last_token" else "_generate"  # the method a suffix where there are several
    assert cli.main(["evaluate", "--model", str(output), "--file", str(data_files["test"])]) == 0
    single = json.loads(capsys.readouterr().out)
    card = json.loads((output / "eval_results.json").read_text())["metrics"]  # what the main process wrote
    for metric in ("accuracy", "f1_macro", "f1_micro"):
        assert single[metric] == pytest.approx(results[f"test_{metric}{suffix}"], abs=1e-6), metric
        assert single[metric] == pytest.approx(card[metric], abs=1e-6), metric
    assert "held-out test split" in (output / "README.md").read_text()
    if approach == "instruction":  # each process scored half the texts; the gathered results are all of them
        assert cli.main(["evaluate", "--model", str(output), "--file", str(data_files["test"]), "--method",
                         "score"]) == 0
        scored = json.loads(capsys.readouterr().out)
        for metric in ("f1_macro", "ece", "brier"):
            assert scored[metric] == pytest.approx(results[f"test_{metric}_score"], abs=1e-5), metric
        assert "test_ece_generate" not in results


def test_compare_prints_both_approaches_side_by_side(tmp_path, data_files, tiny_lm_dirs, capsys):
    model = tiny_lm_dirs["llama", "pad"]
    last_token = write_config(tmp_path, model, data_files, num_train_epochs=1)
    instruction = write_config(tmp_path, model, data_files, approach="instruction", num_train_epochs=1)
    rows = recipe("compare").main(["--last_token_config", str(last_token), "--instruction_config", str(instruction)])
    table = capsys.readouterr().out
    assert [row[0] for row in rows] == ["last-token (embedding)", "instruction (SFT)"]
    assert "| last-token (embedding)" in table and "| instruction (SFT)" in table and "F1 macro" in table
    for _, f1_micro, f1_macro, ece, trainable, seconds, speed in rows:
        assert 0 <= f1_micro <= 1 and 0 <= f1_macro <= 1 and ece >= 0 and trainable > 0 and seconds > 0 and speed > 0


def test_resume_from_checkpoint_reaches_the_trainer(tmp_path, data_files, tiny_lm_dirs, monkeypatch):
    from hf_clf_ext import LastTokenTrainer

    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, num_train_epochs=1)
    with pytest.raises(jobs.JobError, match="resume_from_checkpoint is true, but .* holds no checkpoint"):
        jobs.prepare(LastTokenConfig, ["--config", str(config), "--resume_from_checkpoint", "true"])
    _, off, _ = jobs.prepare(LastTokenConfig, ["--config", str(config), "--resume_from_checkpoint", "false"])
    assert off.resume_from_checkpoint is None
    recipe("train_last_token").main(["--config", str(config)])
    seen = []
    original = LastTokenTrainer.train
    monkeypatch.setattr(LastTokenTrainer, "train",
                        lambda self, *a, **k: seen.append(k.get("resume_from_checkpoint")) or original(self, *a, **k))
    recipe("train_last_token").main(["--config", str(config), "--num_train_epochs", "2",
                                     "--resume_from_checkpoint", "true"])
    assert seen == [True]


def test_cli_evaluate_reads_the_requested_split_and_can_drop_unknown_labels(tmp_path, data_files, tiny_lm_dirs,
                                                                            capsys):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, num_train_epochs=1)
    recipe("train_last_token").main(["--config", str(config)])
    output = yaml.safe_load(config.read_text())["output_dir"]
    extra = tmp_path / "with_unknown.csv"
    from datasets import Dataset

    Dataset.from_dict({"text": ["market", "gadget", "film"],
                       "label": ["business", "tech", "entertainment"]}).to_csv(extra)
    capsys.readouterr()
    with pytest.raises(SystemExit, match="labels never seen in training .*--drop_unknown_labels"):
        cli.main(["evaluate", "--model", output, "--file", str(extra)])
    assert cli.main(["evaluate", "--model", output, "--file", str(extra), "--drop_unknown_labels"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 2


@pytest.mark.parametrize("native_bf16", [True, False])
def test_cpu_bf16_falls_back_to_float32_only_without_native_bf16(tmp_path, data_files, tiny_lm_dirs, monkeypatch,
                                                                 native_bf16, capsys):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, bf16=True)
    _, training_args, _ = jobs.prepare(LastTokenConfig, ["--config", str(config)])
    assert training_args.bf16 is native_bf16
    assert training_args.mixed_precision == ("bf16" if native_bf16 else "no")
    assert ("training in float32" in capsys.readouterr().err) is not native_bf16
