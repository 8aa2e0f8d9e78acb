"""Bad input through the paths a user takes (the `hf-clf` command, the recipes, the configs): each is refused with one
line naming what is wrong and what to do, before a model loads where it can be, and nothing of the user's is lost."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, DatasetDict

from hf_clf_ext import (LastTokenClassifierForSequenceClassification, TextClassifier, TfidfClassifier, cli,
                        classify_texts, jobs)
from hf_clf_ext.distillation.config import DistillationConfig
from hf_clf_ext.instruction.config import InstructionConfig
from hf_clf_ext.last_token.config import LastTokenConfig

from testing_utils import NO_SUCH_MODEL, recipe, write_config

LABELS = ["business", "entertainment", "sport"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, tiny_lm_dirs, tokenizer_dirs):
    """An (untrained) last-token classifier saved as the trainer saves a merged model: what the evaluate paths
    need is its label space, not its accuracy."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dirs["llama", "pad"])
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dirs["llama", "pad"], labels=LABELS, tokenizer=tokenizer)
    model.save_pretrained(folder)
    tokenizer.model_max_length = 48
    tokenizer.save_pretrained(folder)
    return folder


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "hf_clf_cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=300, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})


def one_line_error(done) -> str:
    """The failure as the user sees it: exit status 1, one `hf-clf:` line, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[-1].startswith("hf-clf: "), done.stderr[-2000:]
    return lines[-1]


# --- help and argument errors answer without importing torch -------------------------------------------------------


def test_help_and_argument_errors_do_not_import_torch():
    code = """
import sys, contextlib, io, hf_clf_cli
codes = []
for argv in (["--help"], ["predict", "--help"], ["evaluate", "--help"], ["export", "--help"], ["predict"],
             ["predict", "--model", "m", "--batch_size", "0", "text"], ["nonsense"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            codes.append(hf_clf_cli.main(argv))
        except SystemExit as stop:
            codes.append(stop.code)
print(codes, "torch" in sys.modules, "transformers" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split("]")[1].split() == ["False", "False"], done.stdout + done.stderr
    assert done.stdout.startswith("[0, 0, 0, 0, 2, 2, 2]"), done.stdout


@pytest.mark.parametrize("size", ["0", "-1", "two"])
def test_a_batch_size_below_one_is_refused_by_the_cli(size):
    done = run_cli("predict", "--model", NO_SUCH_MODEL, "--batch_size", size, "some text")
    assert done.returncode == 2 and f"--batch_size: must be a positive integer, got '{size}'" in done.stderr


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_refused_by_the_api(classifier_dir, size):
    classifier = TextClassifier.from_pretrained(classifier_dir)
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {size}"):
        classifier.classify(["a text", "another"], batch_size=size)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        classify_texts(classifier.model, classifier.tokenizer, ["a text"], batch_size=size)


# --- one line for every failure the input causes -----------------------------------------------------------------


def test_export_of_what_cannot_be_exported_says_why_in_one_line(tmp_path, tiny_lm_dirs):
    missing = one_line_error(run_cli("export", "--model", tmp_path / "nope", "--output", tmp_path / "out"))
    assert "nope is neither a folder nor a Hub repo id" in missing
    # The same one-line exits in process (a subprocess each costs a torch import).
    with pytest.raises(SystemExit, match=r"^hf-clf: .* is not a sequence classifier \(model_type 'llama'"):
        cli.main(["export", "--model", str(tiny_lm_dirs["llama", "pad"]), "--output", str(tmp_path / "out")])
    student = TfidfClassifier.fit(["shares rose", "a goal", "markets fell", "the match"],
                                  [[1, 0], [0, 1], [1, 0], [0, 1]], ["business", "sport"], multi_label=False)
    student.save_pretrained(tmp_path / "tfidf")
    with pytest.raises(SystemExit, match="^hf-clf: .* is a TF-IDF student: it has no stock transformers architecture"):
        cli.main(["export", "--model", str(tmp_path / "tfidf"), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_predict_refuses_empty_texts_and_missing_input_files_before_loading(tmp_path):
    empty = one_line_error(run_cli("predict", "--model", NO_SUCH_MODEL, "fine", "  "))
    assert "Texts [1] are empty, white space only, or not strings" in empty
    missing = one_line_error(run_cli("predict", "--model", NO_SUCH_MODEL, "--input", tmp_path / "texts.txt"))
    assert "cannot read --input" in missing and "texts.txt" in missing


# --- evaluate: the split asked for, ids named, nothing silently empty --------------------------------------------


def test_evaluate_refuses_a_split_the_dataset_does_not_have(tmp_path):
    folder = tmp_path / "data"
    rows = {"text": ["a", "b"], "label": ["business", "sport"]}
    DatasetDict(train=Dataset.from_dict(rows), test=Dataset.from_dict(rows)).save_to_disk(folder)
    for split in ("typo", "pool"):
        with pytest.raises(SystemExit, match=rf"has no split '{split}'; its splits are \['train', 'test'\]"):
            cli.main(["evaluate", "--model", NO_SUCH_MODEL, "--dataset", str(folder), "--split", split])


def test_evaluate_reads_class_ids_named_by_labels(tmp_path, classifier_dir, capsys):
    data = tmp_path / "ids.csv"
    Dataset.from_dict({"text": ["shares rose", "the match", "a film", "markets fell"],
                       "label": [0, 2, 1, 0]}).to_csv(data)
    with pytest.raises(SystemExit, match=r"Label 0 in the test data is a class id.*--labels"):
        cli.main(["evaluate", "--model", str(classifier_dir), "--file", str(data)])
    capsys.readouterr()
    assert cli.main(["evaluate", "--model", str(classifier_dir), "--file", str(data), "--labels", *LABELS]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["examples"] == 4
    with pytest.raises(SystemExit, match=r"labels \['tech'\] are not among the model's labels"):
        cli.main(["evaluate", "--model", str(classifier_dir), "--file", str(data), "--labels", "business", "tech"])


def test_a_split_emptied_by_drop_unknown_labels_is_named(tmp_path, classifier_dir, data_files, tiny_lm_dirs):
    data = tmp_path / "unknown.csv"
    Dataset.from_dict({"text": ["a gadget", "a phone", "an app"], "label": ["tech"] * 3}).to_csv(data)
    with pytest.raises(SystemExit, match="All 3 rows of the test data were dropped"):
        cli.main(["evaluate", "--model", str(classifier_dir), "--file", str(data), "--drop_unknown_labels"])
    # Training: a validation split with no known label at all (it used to end in an IndexError).
    Dataset.from_dict({"text": ["a gadget", "a phone"], "label": ["tech"] * 2}).to_csv(data_files["validation"])
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, drop_unknown_labels=True)
    with pytest.raises(ValueError, match="All 2 rows of the evaluation data were dropped"):
        recipe("train_last_token").main(["--config", str(config)])


# --- output folders: nothing of the user's is replaced ------------------------------------------------------------


def test_an_empty_text_or_a_bad_template_is_refused_before_the_model_loads(tmp_path, data_files):
    """The model does not exist: each error must come first, naming the problem in one line."""
    import pandas as pd

    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    rows = pd.read_csv(data_files["validation"])
    rows.loc[1, "text"] = "   "
    rows.to_csv(data_files["validation"], index=False)
    with pytest.raises(SystemExit, match=r"Rows \[1\] of the validation data have empty text"):
        cli.main(["train", "--config", str(config)])
    for template, message in (("{text", "cannot be parsed"), ("{text} {}", "positional field"),
                              ("{title}", "title")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["train", "--config", str(config), "--text_template", template])


def test_an_overwritten_folder_keeps_no_classifier_that_would_load_instead(tmp_path, data_files):
    """--overwrite_output_dir lets a run write over a folder; an older classifier's files that TextClassifier reads
    before a last-token model's config.json (a TF-IDF student, an instruction prompt, an ONNX export) would make the
    folder load as the old model: refused before the model loads, nothing deleted."""
    output = tmp_path / "model"
    output.mkdir()
    (output / "tfidf_classifier.json").write_text("{}")
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, output_dir=str(output), overwrite_output_dir=True)
    with pytest.raises(SystemExit, match="tfidf_classifier.json of another classifier.*instead of the last_token"):
        cli.main(["train", "--config", str(config)])
    assert (output / "tfidf_classifier.json").exists()
    instruction = write_config(tmp_path, NO_SUCH_MODEL, data_files, approach="instruction", output_dir=str(output),
                               overwrite_output_dir=True)
    with pytest.raises(Exception) as error:  # nothing loads before an instruction prompt: on to the missing model
        cli.main(["train", "--approach", "instruction", "--config", str(instruction)])
    assert "another classifier" not in str(error.value)


def test_resuming_from_a_checkpoint_elsewhere_does_not_write_over_the_users_files(tmp_path, data_files):
    """A checkpoint of another folder starts a run in output_dir like a new one: its README.md stays the user's."""
    elsewhere = tmp_path / "old" / "checkpoint-3"
    elsewhere.mkdir(parents=True)
    output = tmp_path / "mine"
    output.mkdir()
    (output / "README.md").write_text("my notes")
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, output_dir=str(output))
    with pytest.raises(SystemExit, match=r"is not empty \(README.md\)"):
        cli.main(["train", "--config", str(config), "--resume_from_checkpoint", str(elsewhere)])
    assert (output / "README.md").read_text() == "my notes"


def test_compare_refuses_one_output_folder_for_both_approaches(tmp_path, data_files):
    last_token = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    instruction = write_config(tmp_path, NO_SUCH_MODEL, data_files, approach="instruction")
    with pytest.raises(SystemExit, match="both approaches would save into"):
        recipe("compare").main(["--last_token_config", str(last_token), "--instruction_config", str(instruction),
                                "--", "--output_dir", str(tmp_path / "same")])


def test_an_output_folder_with_the_users_files_or_old_checkpoints_is_refused(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    output = Path(yaml.safe_load(config.read_text())["output_dir"])
    output.mkdir()
    (output / "README.md").write_text("my notes")
    with pytest.raises(SystemExit, match=r"is not empty \(README.md\).*--overwrite_output_dir true.*"
                                         "--resume_from_checkpoint true"):
        recipe("train_last_token").main(["--config", str(config)])
    (output / "README.md").unlink()
    (output / "checkpoint-12").mkdir()
    with pytest.raises(SystemExit, match=r"holds the checkpoints of an earlier run \(checkpoint-12\)"):
        cli.main(["train", "--config", str(config)])
    assert (output / "checkpoint-12").is_dir()
    # Asked to overwrite, the job goes on: it fails at the (missing) model, not at the folder.
    with pytest.raises(Exception) as error:
        cli.main(["train", "--config", str(config), "--overwrite_output_dir", "true"])
    assert "not empty" not in str(error.value) and "checkpoints of an earlier run" not in str(error.value)


def test_a_tfidf_student_is_not_overwritten_but_its_teacher_labels_resume(tmp_path, data_files):
    output = tmp_path / "student"
    output.mkdir()
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": str(tmp_path / "teacher"), "student_type": "tfidf", "output_dir": str(output),
        "train_file": str(data_files["train"]), "pool_file": str(data_files["test"]), "use_cpu": True,
        "report_to": "none"}))
    (output / "teacher_labels.jsonl").write_text("{}\n")  # an interrupted run's labels: resumable
    student = TfidfClassifier.fit(["shares rose", "a goal"], [[1, 0], [0, 1]], ["business", "sport"], False)
    student.save_pretrained(output)
    with pytest.raises(SystemExit, match=r"already holds a saved model \(a TF-IDF student\).*--overwrite_output_dir"):
        cli.main(["distill", "--config", str(config)])
    for name in os.listdir(output):
        if name != "teacher_labels.jsonl":
            os.remove(output / name)
    (output / "teacher_labels.jsonl.parts").mkdir()  # the finished chunks of an interrupted run: resumable too
    (output / "teacher_labels.jsonl.parts" / "part-0000000.jsonl").write_text("{}\n")
    with pytest.raises(BaseException) as error:  # past the folder check: the teacher does not exist
        cli.main(["distill", "--config", str(config)])
    assert "saved model" not in str(error.value) and "not empty" not in str(error.value)


# --- float options are finite --------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_class, option, value", [
    (LastTokenConfig, "class_weights", "1,nan,1"),
    (LastTokenConfig, "class_weights", "1,inf,1"),
    (LastTokenConfig, "learning_rate", float("nan")),
    (LastTokenConfig, "head_learning_rate", float("inf")),
    (LastTokenConfig, "focal_gamma", float("nan")),
    (LastTokenConfig, "lora_dropout", float("nan")),
    (InstructionConfig, "max_grad_norm", float("inf")),
    (InstructionConfig, "learning_rate", float("-inf")),
    (DistillationConfig, "distill_temperature", float("nan")),
    (DistillationConfig, "tfidf_C", float("inf")),
])
def test_non_finite_float_options_are_refused_naming_the_option(tmp_path, config_class, option, value):
    extra = {"teacher": "t"} if config_class is DistillationConfig else {}
    with pytest.raises(ValueError, match=rf"^{option} must be (a finite number|finite positive numbers)"):
        config_class(output_dir=str(tmp_path), use_cpu=True, report_to="none", **extra, **{option: value})


@pytest.mark.parametrize("key, value", [("dataset", "bundled:bbc-news"), ("model_name_or_path", "bundled:smollm2")])
def test_a_misspelt_bundled_name_is_refused_naming_the_bundled_ones(tmp_path, data_files, key, value):
    """Before: the name went to the Hub (offline: a long connection error that never said `bundled:` was a typo)."""
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    done = run_cli("train", "--config", config, f"--{key}", value)
    line = one_line_error(done)
    assert f"{key} '{value}' is not bundled" in line and "'bundled:" in line.split("the bundled ones are", 1)[1]


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_refuse_a_misspelt_bundled_dataset(command, tmp_path):
    output = ["--output_file", str(tmp_path / "predictions.jsonl")] if command == "predict" else []
    with pytest.raises(SystemExit, match=r"dataset 'bundled:bbc-news' is not bundled; the bundled ones are \["):
        cli.main([command, "--model", NO_SUCH_MODEL, "--dataset", "bundled:bbc-news", "--split", "test", *output])


def test_nan_class_weights_are_refused_by_the_cli(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    with pytest.raises(SystemExit, match=r"class_weights must be finite positive numbers, got '1,nan,1'"):
        cli.main(["train", "--config", str(config), "--class_weights", "1,nan,1"])


def test_a_dataset_and_data_files_together_are_refused_not_the_files_ignored(tmp_path, data_files):
    """Before: the main job's config (`dataset: bundled:bbc_news`) plus `--train_file` read BBC News and ignored the
    user's files without a word. Now one line says so and how to choose; `--dataset ""` reads the files."""
    main_job = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml"
    files = ["--train_file", data_files["train"], "--validation_file", data_files["validation"]]
    output = tmp_path / "run"
    line = one_line_error(run_cli("train", "--config", main_job, "--output_dir", output, *files,
                                  "--model_name_or_path", NO_SUCH_MODEL))  # refused before any model loads
    assert "dataset 'bundled:bbc_news' and train_file, validation_file both name the data" in line
    assert '--dataset ""' in line and not output.exists()  # refused before anything was written
    _, _, splits = jobs.prepare(LastTokenConfig, ["--config", str(main_job), "--output_dir", str(output),
                                                  *map(str, files), "--dataset", ""])
    assert {name: len(split) for name, split in splits.items()} == {"train": 48, "validation": 18}


def test_options_that_cannot_take_effect_are_refused_or_written_as_json(tmp_path, data_files, capsys):
    """Batch-only options with printed texts, max_train_samples below 1, a config of the other approach, and a
    resumed checkpoint in a search are refused before a model loads."""
    with pytest.raises(SystemExit, match="--text_template apply to rows of --input_file"):
        cli.main(["predict", "--model", NO_SUCH_MODEL, "--text_template", "Headline: {text}", "a text"])
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    with pytest.raises(SystemExit, match="max_train_samples must be at least 1"):
        cli.main(["train", "--config", str(config), "--max_train_samples", "0"])
    instruction = write_config(tmp_path, NO_SUCH_MODEL, data_files, approach="instruction")
    with pytest.raises(SystemExit, match="for the instruction approach .*--approach instruction"):
        cli.main(["train", "--config", str(instruction)])
    with pytest.raises(SystemExit, match="resume_from_checkpoint cannot take effect in a search"):
        cli.main(["tune", "--config", str(config), "--resume_from_checkpoint", str(tmp_path)])


def test_evaluate_writes_json_where_a_metric_is_not_a_number(tmp_path, classifier_dir, capsys):
    """One row: ROC-AUC is undefined (NaN), which JSON cannot hold: the output stays JSON, with null."""
    rows = tmp_path / "one.jsonl"
    rows.write_text(json.dumps({"text": "the striker scored", "label": "sport"}) + "\n")
    assert cli.main(["evaluate", "--model", str(classifier_dir), "--file", str(rows)]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert printed["examples"] == 1 and printed["roc_auc"] is None


def test_options_that_choose_nothing_for_the_data_or_the_student_are_refused(tmp_path, data_files):
    """Split names and a dataset configuration with data files, TF-IDF options with another student and a backbone
    for a TF-IDF student would be ignored: refused before anything loads."""
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    with pytest.raises(SystemExit, match="test_split choose within a dataset, and this config reads data files"):
        cli.main(["train", "--config", str(config), "--test_split", "holdout"])
    with pytest.raises(ValueError, match="tfidf_C apply to a 'tfidf' student only"):
        DistillationConfig(teacher="t", output_dir=str(tmp_path / "s"), student_type="last_token", tfidf_C=1.0)
    student = tmp_path / "distill.yaml"
    student.write_text(yaml.safe_dump({"teacher": "t", "student_type": "tfidf", "model_name_or_path": "m",
                                       "train_file": str(data_files["train"]), "pool_file": str(data_files["test"]),
                                       "output_dir": str(tmp_path / "s"), "use_cpu": True, "report_to": "none"}))
    with pytest.raises(SystemExit, match="a tfidf student has no backbone"):
        cli.main(["distill", "--config", str(student)])
