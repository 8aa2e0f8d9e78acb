"""Fine-tune a causal LM into an instruction classifier (TRL SFT); see recipes/train_instruction.py."""

from .. import jobs
from ..instruction.config import InstructionConfig
from . import one_line_errors


@one_line_errors
def main(argv=None) -> dict:
    script_args, training_args, splits = jobs.prepare(InstructionConfig, argv)
    results = jobs.train_instruction(script_args, training_args, splits)
    if training_args.process_index == 0:
        jobs.print_results(results, training_args.output_dir, "instruction")
    return results
