"""Fine-tune a causal LM into an instruction classifier (TRL SFT); see recipes/train_instruction.py."""

from .. import jobs
from ..instruction.config import InstructionConfig
from . import one_line_errors, run_training


@one_line_errors
def main(argv=None) -> dict:
    return run_training(argv, InstructionConfig, jobs.train_instruction, "instruction")
