"""Fine-tune a causal LM into a last-token classifier (the embedding-based approach); see
recipes/train_last_token.py."""

from .. import jobs
from ..last_token.config import LastTokenConfig
from . import one_line_errors, run_training


@one_line_errors
def main(argv=None) -> dict:
    return run_training(argv, LastTokenConfig, jobs.train_last_token, "last_token")
