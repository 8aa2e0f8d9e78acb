"""FSDP on CPU processes: sharding that really shards where accelerate would quietly run DDP.

accelerate turns an FSDP config into FSDP only for accelerator devices. Under `accelerate launch` with an FSDP config
and CPU workers (gloo) it keeps `MULTI_CPU`, which is DDP: every process holds the whole model, and the run says
nothing (measured here before this module: 2 CPU processes trained to the end, and the saved weights were
bit-identical to the DDP run's). torch's FSDP2 `fully_shard` does run on CPU over gloo, so where FSDP2 is asked for on
CPU workers the trainers switch accelerate's state to FSDP after the `Accelerator` is built: accelerate's own
`fsdp2_prepare_model`, state-dict gathering and sharded checkpoints then run as they do on GPUs. What cannot take
effect is refused before a model loads: FSDP in a single process (nothing to shard over) and FSDP1 on CPU.
"""

import gc
import os
import sys

import torch


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_requested(args) -> bool:
    """FSDP asked for by the training arguments (`fsdp=`) or by `accelerate launch`'s FSDP config."""
    return bool(getattr(args, "fsdp", False)) or _flag("ACCELERATE_USE_FSDP")


def shards_parameters(args) -> bool:
    """Whether FSDP or DeepSpeed ZeRO-3 shards the parameters in this run: from the training arguments or from
    `accelerate launch`'s environment."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = _flag("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    return fsdp_requested(args) or zero3 or is_deepspeed_zero3_enabled()


def _fsdp_version(args) -> int:
    """The FSDP version the run would get: the training arguments' where they ask for FSDP (transformers builds
    the plugin from them, version 2 unless `fsdp_config` says otherwise), else `accelerate launch`'s (FSDP_VERSION,
    accelerate's default 1)."""
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None) or {}
        return int(config.get("version", config.get("fsdp_version", 2)))
    return int(os.environ.get("FSDP_VERSION", 1))


def on_cpu(args) -> bool:
    return bool(args.use_cpu) or not torch.accelerator.is_available()


def check_sharding_takes_effect(args) -> None:
    """Refuse a sharded run on CPU that would not shard: DeepSpeed (accelerate drops it for CPU workers and runs
    DDP), FSDP in one process (nothing to shard over) and FSDP1, which accelerate never applies on CPU (FSDP2 is
    switched on by `shard_on_cpu`)."""
    if not on_cpu(args):
        return
    if getattr(args, "deepspeed", None) or _flag("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(
            "DeepSpeed was asked for (an `accelerate launch` DeepSpeed config, or `deepspeed=`), but this run is on "
            "CPU: with CPU workers accelerate runs DDP instead, and without them DeepSpeed's CPU accelerator starts "
            "but transformers sizes its batch for one process (DeepSpeed 0.19: 'train_batch_size is not equal to "
            "micro_batch_per_gpu * gradient_acc_step * world_size'). Shard on CPU with FSDP2 "
            "(recipes/accelerate/cpu_2proc_fsdp.yaml), or use DeepSpeed on GPUs."
        )
    if not fsdp_requested(args):
        return
    if _fsdp_version(args) != 2:
        raise ValueError(
            "FSDP1 was asked for on CPU, where accelerate does not apply it: it would train DDP with the whole model "
            "in every process. Use FSDP2 (`fsdp_version: 2`, as recipes/accelerate/cpu_2proc_fsdp.yaml), or FSDP1 on "
            "GPUs."
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        raise ValueError(
            "FSDP was asked for (an `accelerate launch` FSDP config, or `fsdp=`), but this run has one process: "
            "there is nothing to shard over. Launch 2 or more processes (`--num_processes 2`), or drop FSDP."
        )


def shard_on_cpu(trainer) -> None:
    """After `Trainer.create_accelerator_and_postprocess`: where FSDP2 was asked for and accelerate made the CPU
    workers DDP (`MULTI_CPU`), make them FSDP2 with the plugin the launch described, so that `accelerator.prepare`
    calls `fully_shard` (the default mesh is every CPU process) and saves gather or shard the state dict as FSDP
    does."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = trainer.accelerator
    if not fsdp_requested(trainer.args) or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin_args = trainer.args.fsdp_plugin_args
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:  # checked before a model loads; a plugin built another way is checked here
        raise ValueError("FSDP1 does not run on CPU processes: use fsdp_version 2.")
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def release_device_meshes() -> None:
    """Drop what torch's DTensor keeps of FSDP2's device meshes after a job, so that a destroyed process group really
    ends. Its redistribution planners (`_planner_cache`, keyed by a weak reference to the mesh, but each planner
    holds the mesh), transform plans, mesh topology and sharding-propagation caches keep the meshes, and the meshes
    the process group: after `destroy_process_group` its three gloo threads (`pt_gloo_runloop` x2, `gloo_tcp_loop`)
    ran on until the interpreter exited, measured in both processes of a 2-process FSDP2 job; torch's own
    `destroy_process_group` on a plain gloo group joins them. Caches only: the next DTensor op refills them.
    (torch 2.13; a torch without one of these caches skips it.)"""
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor ran: nothing was cached
        return
    from torch.distributed.tensor import _collective_utils, _redistribute, debug

    topology = getattr(_collective_utils, "MeshTopoInfo", None)
    clears = (getattr(_redistribute, "clear_redistribute_planner_cache", None),  # each where this torch has it
              getattr(getattr(_redistribute, "_gen_transform_infos", None), "cache_clear", None),
              getattr(getattr(topology, "build_from_mesh", None), "cache_clear", None),
              getattr(debug, "_clear_sharding_prop_cache", None))
    for clear in clears:
        if clear is not None:
            clear()
    gc.collect()  # the meshes, planners and specs hold each other
