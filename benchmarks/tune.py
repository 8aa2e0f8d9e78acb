"""The 8-trial `hf-clf tune` of the main job on BBC News at 100 training articles, kept in a journal across sessions.

    python benchmarks/tune.py              # runs (or resumes) the search: 8 trials, the config's own values first
    python benchmarks/tune.py --report     # writes benchmarks/results/tune.md from the journal

The search scores each trial on the config's 100 validation articles (seed 0) and keeps its study in
`benchmarks/results/tune/bbc100_journal.log`, an Optuna journal: a completed trial of this recipe took 8 to 42
minutes on a 2-core CPU, so the 8 trials outlast a working session, and a rerun resumes where the last one stopped. The
validation score picks the best of 8 on 100 articles; whether the best config really beats the default is then
measured on the 445 test articles over 3 seeds, with `benchmarks/quality.py --set` (the report gives the command).
"""

import argparse
import datetime
import sys
from pathlib import Path

from hf_clf_ext.tuning import DONE, STUDY_NAME

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JOURNAL = RESULTS / "tune" / "bbc100_journal.log"
CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml"
OUTPUT_DIR = ROOT / "outputs" / "tune-bbc100"
N_TRIALS = 8
FIELDS = ("learning_rate", "head_learning_rate", "lora_r", "lora_alpha", "lora_dropout", "num_train_epochs")


def search() -> None:
    from hf_clf_ext.scripts.tune import main

    main(["--config", str(CONFIG), "--n_trials", str(N_TRIALS), "--output_dir", str(OUTPUT_DIR),
          "--tune_storage", str(JOURNAL)])


def _minutes(trial) -> str:
    """Training minutes of a finished trial; a failed one ends when a later search marked it, not when it stopped."""
    if trial.datetime_start is None or trial.datetime_complete is None or trial.state.name not in DONE:
        return "-"
    return f"{(trial.datetime_complete - trial.datetime_start) / datetime.timedelta(minutes=1):.0f}"


def _value(name: str, value) -> str:
    if value is None:
        return "-"
    if name in ("learning_rate", "head_learning_rate"):
        return f"{value:.2e}"
    return f"{value:.3f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


def _precisions(trials) -> str:
    """The autocast the trials recorded; trials from before they did (the config's `bf16: true` trains under bf16
    autocast on a CPU with native bf16 and in float32 elsewhere, and this search spanned two sessions, each on a
    machine of its own) say so."""
    kinds = sorted({str(t.user_attrs.get("mixed_precision", "not recorded")) for t in trials})
    return ", ".join(kinds) if kinds else "not recorded"


def report() -> str:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=STUDY_NAME, storage=JournalStorage(JournalFileBackend(str(JOURNAL))))
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    facts = study.user_attrs["search"]
    finished = sum(t.state.name in DONE for t in trials)
    lines = [
        "# Hyperparameter search of the main job (BBC News, 100 training articles)", "",
        f"Written by `benchmarks/tune.py --report` from `{JOURNAL.relative_to(ROOT)}`: `hf-clf tune --config "
        f"{CONFIG.relative_to(ROOT)} --n_trials {N_TRIALS}`, scored on the config's 100 validation articles by "
        f"{facts['metric']} (the best evaluation of each trial). Machine: AMD EPYC, 2 CPU threads, torch 2.13 (one "
        f"process); training precision: {_precisions(trials)}. Trial 0 runs the config's own values; the others are "
        "drawn by Optuna's TPE sampler, whose first 10 draws are random: with 8 trials this is a seeded random "
        "search around the default.",
        "", f"Trials run: {finished} of {N_TRIALS} (pruned ones count, as the search counts them: a trial is pruned "
        "when an epoch's score falls below the median of the earlier trials' scores at that epoch, Optuna's "
        "MedianPruner, once five trials have finished).", "",
        "| trial | what | " + " | ".join(FIELDS) + " | validation scores by epoch | best | minutes |",
        "|---" * (len(FIELDS) + 5) + "|",
    ]
    for trial in trials:
        what = "config's own" if trial.user_attrs.get("baseline") else "drawn"
        if trial.state == TrialState.RUNNING:
            what += " (started, not finished: a resumed search marks it failed)"
        elif trial.state != TrialState.COMPLETE:
            what += f" ({trial.state.name.lower()})"
        scores = " ".join(f"{score:.3f}" for score in trial.user_attrs.get("scores", []))
        lines.append(f"| {trial.number} | {what} | " + " | ".join(_value(n, trial.params.get(n)) for n in FIELDS)
                     + f" | {scores or '-'} | {_value('best', trial.value)} | {_minutes(trial)} |")
    baseline = [t for t in done if t.user_attrs.get("baseline")]
    if done:
        best = study.best_trial
        lines += ["", f"{'Best' if finished >= N_TRIALS else 'Best so far'}: trial {best.number}, {best.value:.4f}"
                  + (f", against the config's own {baseline[0].value:.4f}." if baseline else ".")]
        if not best.user_attrs.get("baseline"):
            pairs = [f"{name}={best.params[name]}" for name in FIELDS if name in best.params]
            lines += ["", "On the test articles, 3 seeds, against the default's rows of `quality.md`:", "",
                      f"    python benchmarks/quality.py --methods last_token --sizes 100 --seeds 0 1 2 "
                      f"--set {' '.join(pairs)}", ""] + test_check(pairs)
    return "\n".join(lines) + "\n"


def test_check(pairs: list[str]) -> list[str]:
    """The best config's test macro-F1 seed by seed (the runs of `quality.py --set`, in `quality_runs.jsonl`) against
    today's default rerun (`head_bias=false`) on the same seeds, and whether it wins outside both spreads."""
    import statistics

    from baselines import mean_std
    from quality import _rows

    runs = _rows()

    def scores(overrides: str) -> dict[int, float]:
        return {run["seed"]: run["f1_macro"] for run in runs
                if run["dataset"] == "bbc" and run["method"] == "last_token" and run["size"] == 100
                and run.get("overrides") == overrides and not run.get("model") and not run.get("max_length")}

    tuned, default = scores(" ".join(sorted(pairs))), scores("head_bias=false")
    if not tuned:
        return ["Not run yet."]
    lines = ["| seed | best config | today's default (head_bias=false) |", "|---|---|---|"]
    lines += [f"| {seed} | {tuned[seed]:.3f} | {_value('best', default.get(seed))} |" for seed in sorted(tuned)]
    lines.append(f"| mean ± std | {mean_std(tuned.values())} | {mean_std(default.values()) if default else '-'} |")
    if len(tuned) < 3 or not default:
        return lines + ["", f"{len(tuned)} of 3 seeds so far."]
    gap = statistics.mean(tuned.values()) - statistics.mean(default.values())
    outside = (statistics.mean(tuned.values()) - statistics.stdev(tuned.values())
               > statistics.mean(default.values()) + statistics.stdev(default.values()))
    return lines + ["", f"The best config {'beats' if outside else 'does not beat'} the default outside both spreads "
                    f"(mean difference {gap:+.3f}): "
                    + ("the search's target is met." if outside else "the search's target is not met; the "
                       "recipe keeps its values.")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="Only write benchmarks/results/tune.md.")
    args = parser.parse_args(argv)
    if not args.report:
        search()
    text = report()
    (RESULTS / "tune.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
