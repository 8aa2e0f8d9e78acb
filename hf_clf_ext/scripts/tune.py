"""Search a last-token classifier's hyperparameters, its LoRA included (`hf-clf tune`); see `hf_clf_ext.tuning`."""

import os
import sys

from .. import jobs
from ..last_token.config import LastTokenConfig
from ..tuning import TuneArguments, run_tuning
from . import leave_together, one_line_errors


@one_line_errors
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args, args, tune_args = jobs.parse_config(LastTokenConfig, argv, extra_class=TuneArguments)
    resuming = tune_args.tune_storage is not None and os.path.isfile(tune_args.tune_storage)
    jobs.check_output_dir(args.output_dir, script_args.overwrite_output_dir, resuming=resuming)
    splits = jobs.load_splits(script_args)
    jobs.check_data(splits, args)
    result = run_tuning(script_args, args, tune_args, splits, argv)
    if args.process_index == 0:
        print(f"\nBest of {result['trials']} trials ({result['pruned']} stopped early by the pruner): trial "
              f"{result['best_trial']}, {result['metric']} {result['best_score']:.4f} with {result['best_values']}."
              + (f"\nThe config's own values (trial {result['baseline_trial']}): {result['baseline_score']:.4f}."
                 if "baseline_trial" in result else "")
              + f"\nTrials: {args.output_dir}/tune_trials.jsonl. "
              f"Train it: hf-clf train --config {result['best_config']}")
    leave_together()
    return result

