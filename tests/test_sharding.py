"""FSDP2 on 2 CPU processes (gloo) through `accelerate launch`, both approaches: the model is really sharded (each
process's checkpoint holds its own shard), the adapters train, the final folder loads with what one process trains
from the same rows, and a run resumes from its sharded checkpoint. What cannot shard
(one process, FSDP1 on CPU) is refused before a model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from hf_clf_ext.sharding import check_sharding_takes_effect
from hf_clf_ext import InstructionConfig, InstructionTrainer, LastTokenConfig, LastTokenTrainer, TextClassifier, jobs

from testing_utils import ROOT, recipe, synthetic, write_config

FSDP = ROOT / "recipes" / "accelerate" / "cpu_2proc_fsdp.yaml"
# What each approach's sharded runs set beside the shared keys: no calibration for the last-token head; LoRA for the
# instruction approach (testing_utils.write_config turns it off there, so that other tests train the whole model).
APPROACH_OPTIONS = {"last_token": dict(calibrate=False), "instruction": dict(use_peft=True)}
TEXTS = ["the bank cut interest rates", "the striker scored twice in the final", "a new phone was released",
         "the film won an award", "voters went to the polls"]


def launch(config: Path, approach: str, *extra: str, script: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP),
               str(script or ROOT / "recipes" / f"train_{approach}.py"), "--config", str(config), *extra]
    run = subprocess.run(command, capture_output=True, text=True, cwd=config.parent, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, failure(run.stderr)
    return run


def failure(stderr: str) -> str:
    """What a failed launch printed: the fault handler's stacks when a process died of a signal (its list of
    extension modules after them runs to thousands of characters), then the end."""
    start = stderr.find("Fatal Python error")
    return (stderr[start:start + 6000] + "\n[...]\n" if start >= 0 else "") + stderr[-4000:]


def probabilities(folder, method=None) -> np.ndarray:
    classifier = TextClassifier.from_pretrained(folder)
    results = classifier.classify(TEXTS, method=method) if method else classifier.classify(TEXTS)
    return np.array([[row["probabilities"][name] for name in classifier.labels] for row in results])


@pytest.mark.parametrize("approach", ["last_token", "instruction"])
def test_fsdp2_on_two_cpu_processes_shards_and_saves_what_one_process_trains(tmp_path, data_files, tiny_lm_dirs,
                                                                             approach):
    model = tiny_lm_dirs["llama", "pad"]
    # The same 8 rows a step either way: 2 processes x 4 rows, or 1 process x 8; no dropout, so that the two runs
    # differ only by float summation order.
    common = dict(num_train_epochs=1, lora_dropout=0.0, eval_strategy="no", save_strategy="steps", save_steps=3,
                  load_best_model_at_end=False)
    common.update(APPROACH_OPTIONS[approach])
    (tmp_path / "fsdp").mkdir(), (tmp_path / "one").mkdir()
    sharded = write_config(tmp_path / "fsdp", model, data_files, approach, per_device_train_batch_size=4, **common)
    single = write_config(tmp_path / "one", model, data_files, approach, per_device_train_batch_size=8, **common)
    launch(sharded, approach)
    recipe(f"train_{approach}").main(["--config", str(single)])
    out_sharded = Path(yaml.safe_load(sharded.read_text())["output_dir"])
    out_single = Path(yaml.safe_load(single.read_text())["output_dir"])

    results = json.loads((out_sharded / jobs.RESULTS_FILE).read_text())
    assert results["world_size"] == 2 and results["distributed_type"] == "FSDP"
    # Sharded checkpoints: one file of the model's state per process (DDP saves one whole copy).
    shards = sorted(p.name for p in (out_sharded / "checkpoint-3").rglob("*.distcp"))
    assert {"__0_0.distcp", "__1_0.distcp"} <= set(shards), shards

    method = "score" if approach == "instruction" else None
    trained = probabilities(out_sharded, method)
    np.testing.assert_allclose(trained, probabilities(out_single, method), atol=2e-4)
    # The adapters trained under FSDP: the merged backbone is not the base's.
    saved, base = load_file(out_sharded / "model.safetensors"), load_file(model / "model.safetensors")
    changed = [name for name, tensor in base.items() if any(
        key.endswith(name.removeprefix("model.")) and saved[key].shape == tensor.shape
        and not torch.equal(saved[key], tensor) for key in saved)]
    assert any("layers.0.self_attn.q_proj" in name for name in changed), changed

    if approach == "last_token":  # a second epoch resumes from the sharded checkpoint of the first
        run = launch(sharded, approach, "--num_train_epochs", "2", "--resume_from_checkpoint", "true",
                     "--log_level", "info")
        assert "Resuming training from checkpoint with epoch 1 and global step 6" in run.stderr  # sharded state loaded
        state = json.loads((out_sharded / "checkpoint-12" / "trainer_state.json").read_text())
        assert state["global_step"] == 12 and state["epoch"] == 2.0
        TextClassifier.from_pretrained(out_sharded).classify(TEXTS)


@pytest.mark.parametrize("approach", ["last_token", "instruction"])
def test_the_processes_of_a_launched_job_leave_together_with_the_group_torn_down(tmp_path, data_files, tiny_lm_dirs,
                                                                                 approach):
    """A process that had finished used to exit while the main one still wrote the merged model, with its gloo group
    alive; that exit sometimes aborted (SIGABRT) and the launcher then killed the main process mid-save. Each job's
    `main` now waits for the others and destroys the group, as `Accelerator.end_training` asks, and the group really
    ends: DTensor's caches kept FSDP2's meshes, which kept the group's gloo threads running into the interpreter's
    exit."""
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], data_files, approach, num_train_epochs=1,
                          per_device_train_batch_size=4, eval_strategy="no", save_strategy="no",
                          load_best_model_at_end=False, lora_dropout=0.0, **APPROACH_OPTIONS[approach])
    script = tmp_path / "job.py"
    script.write_text(
        "import os, sys\nimport torch.distributed\n"
        f"from hf_clf_ext.scripts.train_{approach} import main\n"
        "main(sys.argv[1:])\n"
        "threads = [open(f'/proc/self/task/{task}/comm').read().strip() for task in os.listdir('/proc/self/task')]\n"
        "sys.stdout.write(f'group after the job: {torch.distributed.is_initialized()}, '\n"
        "                 f'gloo threads: {sorted(name for name in threads if \"gloo\" in name)}\\n')\n")
    run = launch(config, approach, script=script)
    assert run.stdout.count("group after the job: False, gloo threads: []") == 2, run.stdout[-2000:]


@pytest.mark.parametrize("trainer_class", [LastTokenTrainer, InstructionTrainer])
def test_fsdp_that_cannot_shard_on_cpu_is_refused_before_a_model_loads(trainer_class, tmp_path, monkeypatch):
    """One process has nothing to shard over, and accelerate applies neither FSDP1 nor DeepSpeed to CPU workers: all
    would train unsharded, so the trainers and the jobs refuse them before a model loads."""
    config_class = LastTokenConfig if trainer_class is LastTokenTrainer else InstructionConfig
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("WORLD_SIZE", "1")
    for version, message in (("2", "this run has one process: there is nothing to shard over"),
                             ("1", "FSDP1 was asked for on CPU")):
        monkeypatch.setenv("FSDP_VERSION", version)
        with pytest.raises(ValueError, match=message):
            trainer_class("no/such-model", args=config_class(output_dir=str(tmp_path), use_cpu=True),
                          train_dataset=synthetic(4, seed=0))
        with pytest.raises(jobs.JobError, match=message):
            jobs.parse_config(config_class, ["--model_name_or_path", "m", "--output_dir", str(tmp_path),
                                             "--use_cpu", "true"])
    # FSDP from the training arguments is FSDP2 unless their fsdp_config says otherwise (transformers' default):
    # refused only for having one process, whatever the environment's FSDP_VERSION (accelerate launch's) says.
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    for version, message in (("1", "this run has one process"), ("2", "this run has one process")):
        monkeypatch.setenv("FSDP_VERSION", version)
        with pytest.raises(ValueError, match=message):
            check_sharding_takes_effect(config_class(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard"))
    with pytest.raises(ValueError, match="FSDP1 was asked for on CPU"):
        check_sharding_takes_effect(config_class(output_dir=str(tmp_path), use_cpu=True, fsdp="full_shard",
                                                 fsdp_config={"version": 1}))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    # DeepSpeed: the arguments are built first (with the launch's variable set, transformers itself requires the
    # deepspeed package and keeps a global DeepSpeed config), then the check sees the launch.
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    args = config_class(output_dir=str(tmp_path), use_cpu=True)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match="DeepSpeed was asked for .* but this run is on CPU"):
        check_sharding_takes_effect(args)
