"""Each job's `main(argv)`: `recipes/*.py` run them as scripts and `hf-clf` calls them, so a job is written once.

    train_last_token.py   fine-tune a last-token classifier (train -> evaluate -> save -> push)
    train_instruction.py  fine-tune an instruction classifier
    distill.py            a teacher labels a pool, a student learns it

A failure the input causes (`jobs.JobError`) ends the script with one line, `hf-clf: <what is wrong>`, and status 1.
"""

import functools

from .. import jobs
from ..sharding import release_device_meshes
from ..jobs import JobError


def one_line_errors(main):
    """`main`, with a `JobError` turned into `SystemExit("hf-clf: ...")` (one line, status 1, no traceback)."""

    @functools.wraps(main)
    def run(argv=None):
        try:
            return main(argv)
        except JobError as error:
            raise SystemExit(f"hf-clf: {error}") from error

    return run


def leave_together() -> None:
    """End a launched job as accelerate asks (`Accelerator.end_training`, transformers' `Trainer.end`): each process
    waits for the others, then the process group is torn down before the interpreter exits. Without it a process
    that had finished exited while the main one still wrote the merged model, and exiting with the gloo group alive
    sometimes aborted ("terminate called without an active exception", SIGABRT), upon which the launcher killed the
    main process mid-save: 2 of 65 two-process FSDP launches of the instruction recipe on a 2-core CPU. Waiting and
    destroying made it rarer, not gone (a CI run since); the group now really ends (`sharding.release_device_meshes`):
    DTensor's caches had kept its gloo threads running until the interpreter exited. Nothing to do in one process."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()
        release_device_meshes()


def run_training(argv, arguments_class, job, approach: str) -> dict:
    """Config + checks (`jobs.prepare`) -> `job` (train -> evaluate -> save -> push) -> the result table."""
    script_args, training_args, splits = jobs.prepare(arguments_class, argv, approach)
    results = job(script_args, training_args, splits)
    if training_args.process_index == 0:
        jobs.print_results(results, training_args.output_dir, approach)
    leave_together()
    return results
