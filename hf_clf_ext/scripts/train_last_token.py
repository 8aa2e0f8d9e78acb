"""Fine-tune a causal LM into a last-token classifier (the embedding-based approach); see recipes/train_last_token.py."""

from .. import jobs
from ..last_token.config import LastTokenConfig
from . import one_line_errors


@one_line_errors
def main(argv=None) -> dict:
    script_args, training_args, splits = jobs.prepare(LastTokenConfig, argv)
    results = jobs.train_last_token(script_args, training_args, splits)
    if training_args.process_index == 0:
        jobs.print_results(results, training_args.output_dir, "last_token")
    return results
