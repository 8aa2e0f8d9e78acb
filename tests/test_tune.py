"""`hf-clf tune`: each trial trains the LoRA it drew (transformers #29391 builds it from the previous trial's values),
scores the best validation value it reached, and the best trial's config reloads as a recipe config."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hf_clf_ext import jobs
from hf_clf_ext.last_token.config import LastTokenConfig

import hf_clf_cli as cli
from testing_utils import NO_SUCH_MODEL, ROOT, make_trainer, synthetic, write_config

SPACE = {"lora_r": {"choices": [2, 4]}, "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
         "lora_dropout": {"low": 0.0, "high": 0.1}}


def test_each_trial_builds_the_adapter_it_drew_and_the_best_config_reloads(tmp_path, data_files, tiny_lm_dirs,
                                                                         capsys):
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files)
    output = tmp_path / "tune"
    assert cli.main(["tune", "--config", str(config), "--n_trials", "2", "--tune_space", json.dumps(SPACE),
                     "--num_train_epochs", "1", "--output_dir", str(output), "--tune_seed", "1",
                     "--baseline_trial", "false"]) == 0
    trials = [json.loads(line) for line in (output / "tune_trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == [0, 1]
    # The adapter each trial trained is the one it drew (the default is 8: neither choice).
    assert [t["built_lora_r"] for t in trials] == [t["values"]["lora_r"] for t in trials]
    assert {t["built_lora_r"] for t in trials} == {2, 4}  # sampler seed 1 draws both
    assert {t["mixed_precision"] for t in trials} == {"none"}  # what each trial trained in (float32 here)
    for trial in trials:
        assert len(trial["scores"]) == 1 and trial["score"] == max(trial["scores"])  # one epoch, one evaluation
    best = max(trials, key=lambda t: t["score"])
    assert f"Best of 2 trials (0 stopped early by the pruner): trial {best['trial']}" in capsys.readouterr().out

    # The best config: the given file and command-line overrides, the best values, a new output folder.
    written = yaml.safe_load((output / "best_config.yaml").read_text())
    assert written["num_train_epochs"] == 1 and written["train_file"] == str(data_files["train"])
    assert "n_trials" not in written and "tune_space" not in written
    script_args, args = jobs.parse_config(LastTokenConfig, ["--config", str(output / "best_config.yaml")])
    assert args.lora_r == best["values"]["lora_r"] and args.num_train_epochs == 1
    assert args.learning_rate == pytest.approx(best["values"]["learning_rate"])
    assert args.lora_dropout == pytest.approx(best["values"]["lora_dropout"])
    assert Path(args.output_dir) == output / "best" and script_args.train_file == str(data_files["train"])


def test_the_config_runs_first_and_a_journal_resumes_without_redrawing(tmp_path, data_files, tiny_lm_dirs, capsys):
    """The config's own values are trial 0 (the search says whether anything beat them). A journal outlives the
    process: a rerun with more trials runs only those left, marks the trial an interrupted search left running as
    failed, and draws new values (a sampler restarted on the same seed would draw trial 1's again)."""
    import optuna

    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, lora_r=4, lora_dropout=0.05)
    output, journal = tmp_path / "tune", tmp_path / "search" / "journal.log"
    space = {**SPACE, "lora_r": {"choices": [2, 4]}}
    command = ["tune", "--config", str(config), "--tune_space", json.dumps(space), "--num_train_epochs", "1",
               "--output_dir", str(output), "--tune_storage", str(journal)]
    assert cli.main([*command, "--n_trials", "2"]) == 0
    first = [json.loads(line) for line in (output / "tune_trials.jsonl").read_text().splitlines()]
    assert [(t["trial"], t["baseline"], t["state"]) for t in first] == [(0, True, "COMPLETE"), (1, False, "COMPLETE")]
    assert first[0]["values"] == {"lora_r": 4, "learning_rate": 3e-3, "lora_dropout": 0.05}
    assert first[0]["built_lora_r"] == 4
    assert f"The config's own values (trial 0): {first[0]['score']:.4f}" in capsys.readouterr().out

    # An interrupted search: a trial started and never finished; and a trial the pruner stopped (it counts as run).
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="hf-clf-tune", storage=storage)
    study.ask()
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    assert cli.main([*command, "--n_trials", "4"]) == 0
    trials = [json.loads(line) for line in (output / "tune_trials.jsonl").read_text().splitlines()]
    assert trials[:2] == first  # kept from the journal, not retrained
    assert [(t["trial"], t["state"]) for t in trials[2:]] == [(2, "FAIL"), (3, "PRUNED"), (4, "COMPLETE")]
    assert trials[4]["values"] != trials[1]["values"] and trials[4]["built_lora_r"] == trials[4]["values"]["lora_r"]
    assert "Best of 4 trials (1 stopped early by the pruner)" in capsys.readouterr().out

    # Enough trials already: nothing trains (the config now names a model that does not exist).
    assert write_config(tmp_path, NO_SUCH_MODEL, data_files, lora_r=4, lora_dropout=0.05) == config
    assert cli.main([*command, "--n_trials", "4"]) == 0
    assert (output / "tune_trials.jsonl").read_text().splitlines() == [json.dumps(t) for t in trials]
    # Another search into the same journal is refused before a model loads.
    other = [*command[:3], "--tune_space", json.dumps({**space, "lora_r": {"choices": [4, 8]}}), *command[5:]]
    with pytest.raises(SystemExit, match="holds another search"):
        cli.main([*other, "--n_trials", "4"])


def test_a_new_trial_is_not_scored_with_the_last_models_thresholds(tiny_lm_dirs, tokenizer, tmp_path):
    """Multi-label calibration tunes the trained model's decision thresholds on the validation split and scores
    with them; the model `fresh_model` builds for the next trial must be scored at the untuned 0.5 again."""
    from transformers import EvalPrediction

    from hf_clf_ext.last_token.adapters import unwrap_classifier
    from hf_clf_ext.metrics import build_compute_metrics

    trainer = make_trainer(tiny_lm_dirs["llama", "pad"], tokenizer, tmp_path, num_train_epochs=1,
                           train=synthetic(48, seed=1, multi_label=True),
                           evaluation=synthetic(24, seed=2, multi_label=True))
    trainer.train()  # calibrates (the default)
    tuned = np.asarray(unwrap_classifier(trainer.model).config.decision_thresholds)
    assert (tuned != 0.5).any(), tuned
    # Every example sits between each class's tuned threshold and 0.5: the two scorers disagree on those classes.
    probabilities = np.tile((tuned + 0.5) / 2, (4, 1))
    prediction = EvalPrediction(predictions=np.log(probabilities / (1 - probabilities)),
                                label_ids=np.ones_like(probabilities))
    untuned = build_compute_metrics(trainer.label_space.problem_type, trainer.label_space.id2label)(prediction)
    assert trainer.compute_metrics(prediction)["f1_micro"] != untuned["f1_micro"]
    trainer.model = trainer.fresh_model()  # what each trial's model_init does
    scored = trainer.compute_metrics(prediction)
    assert (scored["f1_micro"], scored["f1_macro"]) == (untuned["f1_micro"], untuned["f1_macro"])


def test_a_searched_seed_seeds_the_trials_model_and_trials_are_scored_uncalibrated(tmp_path, data_files,
                                                                                      tiny_lm_dirs, monkeypatch):
    """Trainer seeds before `model_init` with the arguments as the previous trial left them: each trial's head and
    LoRA must be drawn right after seeding with its own seed. With `eval_strategy: no` the trial is scored by one
    evaluation after training, which must not follow a calibration fitted on that same split."""
    import torch
    from transformers import set_seed

    from hf_clf_ext.last_token.trainer import LastTokenTrainer

    built, calibrated, original = [], [], LastTokenTrainer.fresh_model

    def recording(self):
        state = torch.random.get_rng_state()
        set_seed(self.args.seed)
        built.append((self.args.seed, torch.equal(state, torch.random.get_rng_state())))
        torch.random.set_rng_state(state)
        return original(self)

    monkeypatch.setattr(LastTokenTrainer, "fresh_model", recording)
    monkeypatch.setattr(LastTokenTrainer, "calibrate", lambda self, *a, **k: calibrated.append(1) or {})
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, eval_strategy="no",
                          save_strategy="no", load_best_model_at_end=False)
    assert cli.main(["tune", "--config", str(config), "--n_trials", "2", "--tune_space",
                     json.dumps({"seed": {"choices": [1, 2]}}), "--num_train_epochs", "1", "--tune_seed", "0",
                     "--output_dir", str(tmp_path / "tune"), "--baseline_trial", "false"]) == 0
    assert [seed for seed, _ in built] == [2, 1] and all(seeded for _, seeded in built), built  # sampler seed 0
    assert calibrated == []
    trials = [json.loads(line) for line in (tmp_path / "tune" / "tune_trials.jsonl").read_text().splitlines()]
    assert all(len(t["scores"]) == 1 for t in trials)  # the one evaluation after training


def test_the_best_config_keeps_every_command_line_value_as_training_read_it(tmp_path, data_files):
    """Several values stay a list, a dashed alias and a `no_` complement land under the field's name, a bare flag
    is true, values keep their types, and the search's own options stay out: `hf-clf train` reads it back."""
    from hf_clf_ext.tuning import best_config

    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, n_trials=4, tune_storage="search.log")  # tune's own
    argv = ["--config", str(config), "--text_columns", "title", "body", "--lora-r", "16", "--no_calibrate",
            "--overwrite_output_dir", "--learning_rate=1e-3", "--n_trials", "2", "--tune_seed", "3"]
    written = best_config(argv, {"lora_dropout": 0.01}, str(tmp_path / "tune"))
    assert {key: written[key] for key in ("text_columns", "lora_r", "calibrate", "overwrite_output_dir",
                                          "learning_rate", "lora_dropout")} == {
        "text_columns": ["title", "body"], "lora_r": 16, "calibrate": False, "overwrite_output_dir": True,
        "learning_rate": 1e-3, "lora_dropout": 0.01}
    assert not {"n_trials", "tune_seed", "tune_storage", "config", "lora-r", "no_calibrate"} & set(written)
    path = tmp_path / "best_config.yaml"
    path.write_text(yaml.safe_dump(written))
    script_args, args = jobs.parse_config(LastTokenConfig, ["--config", str(path)])
    assert args.text_columns == ["title", "body"] and args.lora_r == 16 and args.calibrate is False
    assert script_args.overwrite_output_dir is True and args.lora_dropout == 0.01 and args.learning_rate == 1e-3


def test_an_integer_range_on_a_log_scale_draws_integers():
    import optuna

    from hf_clf_ext.tuning import suggest

    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = suggest(trial, {"lora_r": {"low": 4, "high": 64, "log": True}, "lora_dropout": {"low": 0.0, "high": 0.1}})
    assert isinstance(values["lora_r"], int) and 4 <= values["lora_r"] <= 64
    assert isinstance(values["lora_dropout"], float)


def test_a_search_with_nothing_left_to_run_leaves_its_journal_alone(tmp_path, data_files, tiny_lm_dirs):
    """A finished search rerun with the baseline on (the first run had it off) must not queue the baseline: a later,
    longer search would run it as trial N, not first."""
    import optuna

    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, lora_r=4)
    journal = tmp_path / "journal.log"
    command = ["tune", "--config", str(config), "--tune_space", json.dumps(SPACE), "--num_train_epochs", "1",
               "--output_dir", str(tmp_path / "tune"), "--tune_storage", str(journal), "--n_trials", "1"]
    assert cli.main([*command, "--baseline_trial", "false"]) == 0
    assert cli.main(command) == 0
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    states = [t.state.name for t in optuna.load_study(study_name="hf-clf-tune", storage=storage).trials]
    assert states == ["COMPLETE"]


def test_the_default_space_holds_the_configs_own_values(tmp_path, data_files):
    """Fractional epochs are among the epoch choices; a config without a head learning rate searches none."""
    from hf_clf_ext.tuning import baseline_values, default_space

    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, num_train_epochs=1.5, head_learning_rate=None,
                          lora_r=12, lora_dropout=0.2)  # learning rate 3e-3: above the default range's 1e-3
    _, args = jobs.parse_config(LastTokenConfig, ["--config", str(config)])
    space = default_space(args)
    assert space["num_train_epochs"] == {"choices": [1, 1.5, 2, 4]} and "head_learning_rate" not in space
    assert space["lora_r"] == {"choices": [4, 8, 12, 16, 32]} and space["learning_rate"]["high"] == 3e-3
    assert baseline_values(args, space) == {"learning_rate": 3e-3, "lora_r": 12, "lora_alpha": 16,
                                            "lora_dropout": 0.2, "num_train_epochs": 1.5}
    # The main job's config: the space its search journal holds (benchmarks/results/tune/) is unchanged.
    _, main = jobs.parse_config(LastTokenConfig,
                                ["--config", str(ROOT / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml")])
    assert default_space(main) == {
        "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
        "head_learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
        "lora_r": {"choices": [4, 8, 16, 32]}, "lora_alpha": {"choices": [8, 16, 32, 64]},
        "lora_dropout": {"low": 0.0, "high": 0.1}, "num_train_epochs": {"choices": [2, 5, 10]}}
    with pytest.raises(jobs.JobError, match="head_learning_rate=None is outside"):
        baseline_values(args, {"head_learning_rate": {"low": 1e-4, "high": 1e-2}})


def test_a_baseline_outside_the_space_is_refused_before_a_model_loads(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)  # lora_r 8 by default, the space holds 2 and 4
    with pytest.raises(SystemExit, match=r"config's lora_r=8 is outside tune_space\['lora_r'\]"):
        cli.main(["tune", "--config", str(config), "--tune_space", json.dumps(SPACE)])


@pytest.mark.parametrize("space, message", [
    ({"lora_rank": {"choices": [4]}}, "'lora_rank', which is not a field"),
    ({"lora_r": [4, 8]}, "must be"),
    ({"learning_rate": {"low": 1e-3, "high": 1e-4}}, "low must be below high"),
    ({"max_length": {"choices": [32, 64]}}, "'max_length', which the trainer reads once"),
    ({"pooling_suffix": {"choices": ["", " Topic:"]}}, "'pooling_suffix', which the trainer reads once"),
    ({"lora_dropout": {"low": 0.0, "high": 0.1, "log": True}}, "a log scale needs a positive low"),
])
def test_a_bad_search_space_is_refused_before_a_model_loads(tmp_path, data_files, space, message, capsys):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)  # a model that does not exist: nothing may load
    with pytest.raises(SystemExit, match=message):
        cli.main(["tune", "--config", str(config), "--tune_space", json.dumps(space)])


def test_a_search_without_an_adapter_does_not_search_one(tmp_path, data_files):
    """use_peft false: the default space leaves the LoRA fields out, and a space naming one is refused."""
    from hf_clf_ext.tuning import default_space

    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, use_peft=False)
    _, args = jobs.parse_config(LastTokenConfig, ["--config", str(config)])
    assert set(default_space(args)) == {"learning_rate", "head_learning_rate", "num_train_epochs"}
    with pytest.raises(SystemExit, match="'lora_r', but use_peft is false"):
        cli.main(["tune", "--config", str(config), "--tune_space", json.dumps({"lora_r": {"choices": [4, 8]}})])


def test_a_search_of_a_fixed_number_of_steps_does_not_search_epochs(tmp_path, data_files):
    """Trainer ignores num_train_epochs when max_steps is set: the default space leaves it out, a space naming it is
    refused (each trial would train as long, and best_config.yaml would record an epoch count that did nothing)."""
    from hf_clf_ext.tuning import default_space

    config = write_config(tmp_path, NO_SUCH_MODEL, data_files, max_steps=20)
    _, args = jobs.parse_config(LastTokenConfig, ["--config", str(config)])
    assert "num_train_epochs" not in default_space(args) and "learning_rate" in default_space(args)
    with pytest.raises(SystemExit, match="max_steps=20 sets how long"):
        cli.main(["tune", "--config", str(config), "--tune_space",
                  json.dumps({"num_train_epochs": {"choices": [2, 4]}})])


def test_tuning_needs_a_validation_split(tmp_path, data_files):
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    values = yaml.safe_load(config.read_text())
    del values["validation_file"]
    config.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit, match="validation split"):
        cli.main(["tune", "--config", str(config)])


def test_a_launch_of_several_processes_is_refused(tmp_path, data_files, monkeypatch):
    """Trials are drawn in one process: a launch of several is refused before a model loads (not half-searched)."""
    from hf_clf_ext.last_token.config import LastTokenConfig

    monkeypatch.setattr(LastTokenConfig, "world_size", property(lambda self: 2))
    config = write_config(tmp_path, NO_SUCH_MODEL, data_files)
    with pytest.raises(SystemExit, match="one process .*has 2"):
        cli.main(["tune", "--config", str(config)])
