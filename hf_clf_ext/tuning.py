"""Hyperparameter search for the last-token classifier, its adapter included: `hf-clf tune`.

    hf-clf tune --config recipes/configs/smollm2_135m_bbc_last_token.yaml --n_trials 8 --output_dir outputs/tune
    hf-clf train --config outputs/tune/best_config.yaml        # the best trial's settings, as a recipe config

Optuna runs through `Trainer.hyperparameter_search`. Every trial trains a new classifier: a new head and a new LoRA
built from the trial's `lora_r`, `lora_alpha` and `lora_dropout`. That is what `hyperparameter_search` cannot do by
itself (transformers #29391): it calls `model_init` before it writes the trial's values into the arguments, so a
`model_init` that reads them builds every trial with the previous trial's adapter. Here `model_init` draws the trial's
values itself (Optuna returns the same value for a name asked twice in one trial) and builds from them.

A trial scores the best validation value of `metric_for_best_model` it reached (the model `load_best_model_at_end`
keeps), not its last evaluation. The search writes `tune_trials.jsonl` (each trial's values, the LoRA rank its model
was really built with, its score) and `best_config.yaml`: the config it was given, command-line overrides included,
with the best trial's values, ready for `hf-clf train` or the recipes.

The config's own values run first (`baseline_trial`), so a search reports whether it beat the config as given. A
trial below the median of earlier trials at the same step is stopped early (Optuna's `MedianPruner`, which
`hyperparameter_search` uses unless told otherwise, made explicit here) and counts as a trial run. A completed trial
of the default SmolLM2 recipe took 8 to 42 minutes on a 2-core CPU (a pruned one about 2), so 8 trials outlast a
working session: `tune_storage` keeps the study in a journal file a rerun resumes (see `open_study`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from .jobs import JobError, resume_asked

TRIALS_FILE = "tune_trials.jsonl"
BEST_CONFIG_FILE = "best_config.yaml"
STUDY_NAME = "hf-clf-tune"
# What counts as a trial run (state names): one that finished, or one the pruner stopped (Optuna's own count). A
# failed one (an error, or left running by an interrupted search) does not.
DONE = ("COMPLETE", "PRUNED")


@dataclass
class TuneArguments:
    """Options of `hf-clf tune` (besides the training config it searches around)."""

    n_trials: int = field(default=8, metadata={"help": "Trials to run (each trains a classifier)."})
    tune_space: str | None = field(
        default=None,
        metadata={"help": "JSON replacing the default search space, e.g. '{\"lora_r\": {\"choices\": [4, 16]}, "
                  "\"learning_rate\": {\"low\": 1e-5, \"high\": 1e-3, \"log\": true}}'. Keys: fields of the training "
                  "config; values: {\"choices\": [...]} or {\"low\", \"high\", \"log\"} (integers give an "
                  "integer range)."},
    )
    tune_seed: int = field(default=0,
                           metadata={"help": "Seed of Optuna's sampler (the trials' training uses `seed`)."})
    tune_storage: str | None = field(
        default=None,
        metadata={"help": "A journal file holding the search (Optuna's JournalFileBackend, JSON lines). An existing "
                  "one is resumed: only the trials left to reach n_trials run, so a search outlives the machine it "
                  "started on. Without it the search lives in memory."},
    )
    baseline_trial: bool = field(
        default=True,
        metadata={"help": "Run the config's own values as the first trial, so the search says whether any drawn "
                  "trial beat the config as given (on the same validation split)."},
    )


def default_space(args) -> dict:
    """The learning rates (log scale), the LoRA rank, scale and dropout, and epochs around the config's. Each range
    and list is widened to hold the config's own value (fractional epochs too), so the baseline trial is always in
    it. No head learning rate when the config has none (the head then trains at the LoRA's rate, and searching one
    would change what the config means), no epochs when `max_steps` sets the length (streamed data)."""
    own = int(args.num_train_epochs) if float(args.num_train_epochs).is_integer() else args.num_train_epochs
    epochs = max(1, round(args.num_train_epochs))
    head_rate = getattr(args, "head_learning_rate", None)
    space = {
        "learning_rate": {"low": min(1e-5, args.learning_rate), "high": max(1e-3, args.learning_rate), "log": True},
        "head_learning_rate": {"low": min(1e-4, head_rate or 1), "high": max(1e-2, head_rate or 0), "log": True},
        "lora_r": {"choices": sorted({4, 8, 16, 32, args.lora_r})},
        "lora_alpha": {"choices": sorted({8, 16, 32, 64, args.lora_alpha})},
        "lora_dropout": {"low": 0.0, "high": max(0.1, args.lora_dropout)},
        "num_train_epochs": {"choices": sorted({max(1, epochs // 2), epochs, 2 * epochs, own})},
    }
    if head_rate is None:
        del space["head_learning_rate"]
    if args.max_steps > 0:  # Trainer then stops at max_steps whatever the epochs
        del space["num_train_epochs"]
    if not args.use_peft:  # no adapter to shape
        space = {name: spec for name, spec in space.items() if not name.startswith("lora_")}
    return space


def parse_space(text: str | None, args) -> dict:
    """The search space: `text` (JSON) checked against the training config's fields, or the default."""
    if text is None:
        return default_space(args)
    try:
        space = json.loads(text)
    except json.JSONDecodeError as error:
        raise JobError(f"tune_space is not JSON: {error}") from error
    if not isinstance(space, dict) or not space:
        raise JobError("tune_space must be a JSON object naming at least one field.")
    from .last_token.trainer import LastTokenTrainer

    known = {f.name for f in fields(args)}
    for name, spec in space.items():
        if name not in known:
            raise JobError(f"tune_space names {name!r}, which is not a field of the training config.")
        if name in LastTokenTrainer.prepared_once:
            raise JobError(f"tune_space names {name!r}, which the trainer reads once, when it prepares the data: "
                           "every trial would train with the config's value. Run one search per value instead.")
        if name == "num_train_epochs" and args.max_steps > 0:
            raise JobError(f"tune_space names 'num_train_epochs', but max_steps={args.max_steps} sets how long "
                           "training runs: every trial would train as long. Search max_steps instead.")
        if name.startswith("lora_") and not args.use_peft:
            raise JobError(f"tune_space names {name!r}, but use_peft is false: no LoRA is trained, so it would "
                           "change nothing.")
        ranged = isinstance(spec, dict) and {"low", "high"} <= set(spec) and set(spec) <= {"low", "high", "log"}
        listed = isinstance(spec, dict) and set(spec) == {"choices"} and isinstance(spec["choices"], list) \
            and len(spec["choices"]) > 0
        if not (ranged or listed):
            raise JobError(f"tune_space[{name!r}] must be {{\"choices\": [...]}} or {{\"low\": .., \"high\": .., "
                           f"\"log\": ..}}, got {spec!r}.")
        if ranged and not spec["low"] < spec["high"]:
            raise JobError(f"tune_space[{name!r}]: low must be below high, got {spec!r}.")
        if ranged and spec.get("log") and not spec["low"] > 0:
            raise JobError(f"tune_space[{name!r}]: a log scale needs a positive low, got {spec!r}.")
    return space


def suggest(trial, space: dict) -> dict:
    """The trial's values (asked again within a trial, Optuna answers the same)."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[name] = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                               log=bool(spec.get("log")))
    return values


TUNE_KEYS = {f.name for f in fields(TuneArguments)}


def command_line_options(argv: list[str]) -> dict:
    """The values `argv` gives, read by the parser `hf-clf tune` reads them with: under their fields' names (a dashed
    alias such as `--lora-r` or a `--no_x` complement included), typed, several values as a list, a bare flag as
    true. `config` is the config file's path, when given."""
    import argparse

    from .jobs import config_parser
    from .last_token.config import LastTokenConfig

    items, options = list(argv), {}
    if "--config" in items:  # TrlParser reads `--config path` itself (not `--config=path`)
        at = items.index("--config")
        options["config"] = items[at + 1]
        del items[at:at + 2]
    parser = config_parser(LastTokenConfig, extra_class=TuneArguments)  # as scripts/tune.py's parse_config
    for action in parser._actions:  # only what the command line gives
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = parser.parse_known_args(items)
    return {**options, **vars(given)}


def best_config(argv: list[str], best: dict, output_dir: str) -> dict:
    """The config the search was given (file, then command-line overrides) with the best trial's values; the
    search's own options (`TuneArguments`, in the file or on the command line) left out: training refuses them."""
    import yaml

    options = command_line_options(argv)
    config = {}
    if options.get("config"):
        with open(options["config"], encoding="utf-8") as file:
            config = yaml.safe_load(file) or {}
    config = {key: value for key, value in config.items()  # the search's, not training's
              if key not in TUNE_KEYS and key != "resume_from_checkpoint"}
    config.update({key: value for key, value in options.items() if key != "config" and key not in TUNE_KEYS})
    config.update(best)
    config["output_dir"] = os.path.join(output_dir, "best")
    return config


def baseline_values(args, space: dict) -> dict:
    """The config's own values of the searched fields, refused when the space cannot hold them (a baseline trial
    outside the space would not be the config as given)."""
    values = {}
    for name, spec in space.items():
        value = getattr(args, name)
        if isinstance(value, float) and value.is_integer() and ("choices" in spec or isinstance(spec["low"], int)):
            value = int(value)  # num_train_epochs is a float field; the space names whole epochs
        if value is None:
            inside = "choices" in spec and None in spec["choices"]
        else:
            inside = value in spec["choices"] if "choices" in spec else spec["low"] <= value <= spec["high"]
        if not inside:
            raise JobError(f"the baseline trial runs the config's own values, but the config's {name}={value!r} is "
                           f"outside tune_space[{name!r}] = {spec!r}: add it to the space or pass "
                           "--baseline_trial false.")
        values[name] = value
    return values


def open_study(tune_args: TuneArguments, space: dict, metric: str, direction: str):
    """The study: in memory, or the journal `tune_storage` (created, or resumed when it holds the same search).

    A resumed journal's trials left running by an interrupted search are marked failed (one process runs a study),
    and the sampler's seed moves on by the trials already drawn, so a resumed search does not draw them again."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    facts = {"space": space, "metric": metric, "direction": direction}
    if tune_args.tune_storage is None:
        storage = optuna.storages.InMemoryStorage()
    else:
        folder = os.path.dirname(os.path.abspath(tune_args.tune_storage))
        os.makedirs(folder, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(tune_args.tune_storage))
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True)
    held = study.user_attrs.get("search")
    if held is None:
        study.set_user_attr("search", facts)
    elif held != json.loads(json.dumps(facts)):
        raise JobError(f"{tune_args.tune_storage} holds another search ({held}); this one is {facts}. Give a new "
                       "tune_storage, or the same space and metric to resume it.")
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                                       TrialState.FAIL)
    return study, storage


def run_tuning(script_args, args, tune_args: TuneArguments, splits, argv: list[str]) -> dict:
    """Search, write the trials and the best config into `args.output_dir`; returns the best run's facts."""
    from .jobs import BUNDLED_MODEL_IDS, resolve_model
    from .last_token.trainer import LastTokenTrainer
    from .trainer_base import mixed_precision

    if "validation" not in splits:
        raise JobError("tuning scores each trial on the validation split: give validation_file or a dataset with one.")
    if args.world_size > 1:
        raise JobError(f"hf-clf tune runs its trials in one process (this launch has {args.world_size}): run the "
                       "search alone, then train best_config.yaml with accelerate launch.")
    if resume_asked(args.resume_from_checkpoint):
        raise JobError("resume_from_checkpoint cannot take effect in a search (each trial trains anew; "
                       "hyperparameter_search passes its own checkpoint): resume a search with tune_storage.")
    if tune_args.n_trials < 1:
        raise JobError(f"n_trials must be at least 1, got {tune_args.n_trials}.")
    try:
        import optuna
    except ImportError:
        raise JobError("hf-clf tune needs Optuna: pip install 'hf-clf-ext[tune]'.") from None
    space = parse_space(tune_args.tune_space, args)
    baseline = baseline_values(args, space) if tune_args.baseline_trial else None
    metric = args.metric_for_best_model or "loss"
    metric = metric if metric.startswith("eval_") else f"eval_{metric}"
    maximize = args.greater_is_better if args.greater_is_better is not None else not metric.endswith("loss")
    direction = "maximize" if maximize else "minimize"
    study, storage = open_study(tune_args, space, metric, direction)
    drawn_before = len(study.trials)
    left = tune_args.n_trials - sum(t.state.name in DONE for t in study.trials)
    if left > 0:
        if baseline is not None and not any(t.user_attrs.get("baseline") and t.state.name in (*DONE, "WAITING")
                                            for t in study.trials):
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
        if args.base_model_id is None:
            args.base_model_id = BUNDLED_MODEL_IDS.get(script_args.model_name_or_path)
        model, model_kwargs = resolve_model(script_args)
        # A trial's model is not kept (best_config.yaml trains the winner again), so it is not calibrated: that
        # would cost two passes over the validation split, and, without evaluations during training, score the
        # trial after a temperature and (multi-label) thresholds fitted on the split it is scored on.
        args.calibrate = False
        trainer = LastTokenTrainer(model, args=args, train_dataset=splits["train"],
                                   eval_dataset=splits["validation"], labels=script_args.labels,
                                   model_init_kwargs=model_kwargs)
        running: dict = {}

        def model_init(trial):
            values = suggest(trial, space) if trial is not None else {}
            for name, value in values.items():  # what hyperparameter_search would write only after this call
                setattr(trainer.args, name, value)
            # Trainer seeded before this call with the previous trial's seed: a searched seed must shape this
            # trial's head and LoRA (and reproduce from best_config.yaml).
            seed_everything(trainer.args.seed, trainer.args.full_determinism)
            built = trainer.fresh_model()
            peft_config = getattr(built, "peft_config", {}).get("default")
            running.update(trial=trial, scores=[])
            if trial is not None:
                trial.set_user_attr("built_lora_r", getattr(peft_config, "r", None))
                trial.set_user_attr("mixed_precision", mixed_precision(trainer.args))
            return built

        def objective(metrics: dict) -> float:
            if metric not in metrics:
                raise JobError(f"the validation metrics have no {metric!r} (they have {sorted(metrics)}); set "
                               "metric_for_best_model to one of them.")
            running["scores"].append(metrics[metric])
            if running["trial"] is not None:
                running["trial"].set_user_attr("scores", running["scores"])
            return max(running["scores"]) if maximize else min(running["scores"])

        trainer.model_init = model_init
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        trainer.hyperparameter_search(
            hp_space=lambda trial: suggest(trial, space), compute_objective=objective, n_trials=left,
            direction=direction, backend="optuna", storage=storage, study_name=STUDY_NAME,
            load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=tune_args.tune_seed + drawn_before),
            pruner=optuna.pruners.MedianPruner())
    return write_results(study, argv, args, metric, direction)


def seed_everything(seed: int, full_determinism: bool) -> None:
    """What Trainer does with `seed` before it builds a model from `model_init`."""
    from transformers import enable_full_determinism, set_seed

    enable_full_determinism(seed) if full_determinism else set_seed(seed)


def write_results(study, argv: list[str], args, metric: str, direction: str) -> dict:
    """`tune_trials.jsonl` from every trial the study holds (resumed ones included), and the best config."""
    import yaml
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not any(t.state == TrialState.COMPLETE for t in trials):
        raise JobError("no trial of the search completed: nothing to report.")
    best = study.best_trial
    result = {"metric": metric, "direction": direction, "best_trial": best.number, "best_score": best.value,
              "best_values": best.params, "trials": sum(t.state.name in DONE for t in trials),
              "pruned": sum(t.state.name == "PRUNED" for t in trials)}
    baseline = [t for t in trials if t.user_attrs.get("baseline") and t.state == TrialState.COMPLETE]
    if baseline:
        result["baseline_trial"], result["baseline_score"] = baseline[0].number, baseline[0].value
    if args.process_index == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, TRIALS_FILE), "w", encoding="utf-8") as file:
            for trial in trials:
                file.write(json.dumps({
                    "trial": trial.number, "state": trial.state.name,
                    "baseline": bool(trial.user_attrs.get("baseline")),
                    "values": trial.params, "built_lora_r": trial.user_attrs.get("built_lora_r"),
                    "mixed_precision": trial.user_attrs.get("mixed_precision"),
                    "scores": trial.user_attrs.get("scores", []), "score": trial.value}) + "\n")
        config = best_config(argv, best.params, args.output_dir)
        with open(os.path.join(args.output_dir, BEST_CONFIG_FILE), "w", encoding="utf-8") as file:
            yaml.safe_dump(config, file, sort_keys=False)
        result["best_config"] = os.path.join(args.output_dir, BEST_CONFIG_FILE)
    return result
