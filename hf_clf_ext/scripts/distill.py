"""Distil a trained classifier into a cheaper student; see recipes/distill.py."""

from .. import jobs
from . import leave_together, one_line_errors


@one_line_errors
def main(argv=None) -> dict:
    script_args, args, splits, pool_texts = jobs.prepare_distillation(argv)
    results = jobs.distill(script_args, args, splits, pool_texts)
    if args.process_index == 0:
        jobs.print_results(results, args.output_dir, "tfidf" if args.student_type == "tfidf" else "last_token")
    leave_together()
    return results
