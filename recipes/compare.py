"""Train both approaches on the same data and print them side by side, like the paper's tables.

    python recipes/compare.py --last_token_config recipes/configs/smollm2_135m_bbc_last_token.yaml \
        --instruction_config recipes/configs/smollm2_135m_bbc_instruction.yaml

Overrides after `--` apply to both configs: `... -- --num_train_epochs 3`. The two configs should name the same
model and data; the table shows test F1 (micro, macro), ECE, trainable parameters, training time and inference
speed (instruction rows: constrained decoding, and label scoring for ECE).
"""

import argparse
import os

from hf_clf_ext import jobs
from hf_clf_ext.instruction import METHODS
from hf_clf_ext.instruction.config import InstructionConfig
from hf_clf_ext.last_token.config import LastTokenConfig
from hf_clf_ext.metrics import headline
from hf_clf_ext.scripts import one_line_errors

COLUMNS = ("F1 micro", "F1 macro", "ECE", "trainable params", "train s", "inference ex/s")
KEYS = ("f1_micro", "f1_macro", "ece")  # the same result keys for both approaches (see metrics.headline)


@one_line_errors
def main(argv=None) -> list[tuple]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--last_token_config", required=True)
    parser.add_argument("--instruction_config", required=True)
    args, overrides = parser.parse_known_args(argv)
    overrides = [item for item in overrides if item != "--"]
    # Parse and check both configs before either model loads.
    last_token = jobs.prepare(LastTokenConfig, ["--config", args.last_token_config, *overrides])
    instruction = jobs.prepare(InstructionConfig, ["--config", args.instruction_config, *overrides], "instruction")
    if last_token[0].model_name_or_path != instruction[0].model_name_or_path:
        raise jobs.JobError("compare: the two configs name different models.")
    if os.path.abspath(last_token[1].output_dir) == os.path.abspath(instruction[1].output_dir):
        raise jobs.JobError(f"compare: both approaches would save into {last_token[1].output_dir} (an --output_dir "
                            "override applies to both configs): give each config its own output_dir.")
    rows = []
    for name, results, methods in (("last-token (embedding)", jobs.train_last_token(*last_token), ()),
                                   ("instruction (SFT)", jobs.train_instruction(*instruction), METHODS)):
        rows.append((name, *(headline(results, f"test_{key}", methods) for key in KEYS),
                     results["trainable_parameters"], results["train_seconds"],
                     headline(results, "test_examples_per_second", methods)))
    if last_token[1].process_index == 0:
        print_table(rows)
    return rows


def print_table(rows) -> None:
    header = f"| {'approach':<24} | " + " | ".join(f"{column:>16}" for column in COLUMNS) + " |"
    print("\n" + header + "\n|" + "-" * 26 + ("|" + "-" * 18) * len(COLUMNS) + "|")
    for name, *values in rows:
        cells = [f"{v:>16,}" if isinstance(v, int) else f"{v:>16.3f}" if isinstance(v, float) else f"{'-':>16}"
                 for v in values]
        print(f"| {name:<24} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
