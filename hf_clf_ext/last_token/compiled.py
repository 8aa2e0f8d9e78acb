"""A `torch.compile`d forward for long inference jobs, over bucketed shapes so that batches reuse compiled graphs.

`classify_texts(..., compile=True)` (also `TextClassifier.from_pretrained(..., compile=True)`, `hf-clf predict
--compile`) runs the classifier through `torch.compile(model, dynamic=True)`. Batches are padded to a fixed number of
rows and their length padded up to a multiple of `BUCKET_TOKENS` (never past the model's position limit), so a
length-sorted job meets a handful of shapes: the first batch of each pays for tracing and code generation, the rest
reuse it. Padding rows repeat a real row; extra padding tokens are masked out, so results equal eager ones to
floating-point rounding. The compiled module lives as long as the model, and `stats` says what compiling cost.

`compile=None` (the default) compiles only where it pays: at least `COMPILE_MIN_TEXTS` texts, and a device whose
eager forward runs well below its matrix-product rate. On CPUs without native bf16 (AVX2 only) the float32 forward
already runs at 86 % of the matmul rate of the model's own shapes, and compiling gave 0.94x after 150-160 s of
compilation (SmolLM2-135M, benchmarks/results/speed.md), so there `None` stays eager.
"""

import logging
import shutil
import time
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

BUCKET_TOKENS = 32
COMPILE_MIN_TEXTS = 2048
_ATTRIBUTE = "_hf_clf_compiled"  # kept in the model's __dict__: not a registered submodule, not in its state dict


@dataclass
class CompileStats:
    """What the compiled forward has run: `shapes` (batch rows, padded length) met so far, `first_call_seconds`
    spent in the first batch of each (compilation included), and every batch's count and seconds."""

    shapes: set = field(default_factory=set)
    first_call_seconds: float = 0.0
    batches: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        steady = self.batches - len(self.shapes)
        rate = f", the other {steady} batches in {self.seconds - self.first_call_seconds:.1f} s" if steady else ""
        return (f"compiled forward: {len(self.shapes)} shape(s), their first batches {self.first_call_seconds:.1f} s "
                f"(compilation included){rate}")


class CompiledForward:
    """`torch.compile(model, dynamic=True)` behind bucketed shapes: `bucket_length` says how far to pad a batch."""

    def __init__(self, model: torch.nn.Module):
        self.module = torch.compile(model, dynamic=True)
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", None) or config
        self.suffix = len(getattr(config, "suffix_token_ids", None) or [])
        limits = [getattr(text_config, name, None) for name in ("max_position_embeddings", "n_positions")]
        self.max_positions = next((limit for limit in limits if isinstance(limit, int)), None)
        self.stats = CompileStats()

    def bucket_length(self, length: int) -> int:
        """`length` rounded up to a multiple of BUCKET_TOKENS, but not so far that the sequence (with the pooling
        suffix the model appends) would pass the model's position limit."""
        bucket = -(-length // BUCKET_TOKENS) * BUCKET_TOKENS
        if self.max_positions is not None:
            bucket = min(bucket, max(length, self.max_positions - self.suffix))
        return bucket

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: int) -> torch.Tensor:
        """fp32 logits (on the CPU) of a batch padded to a bucket length, run as a batch of `rows` rows."""
        count = len(input_ids)
        if rows > count:  # repeat the last row: a valid input whose outputs are dropped
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(rows - count, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(rows - count, -1)])
        shape = tuple(input_ids.shape)
        started = time.perf_counter()
        logits = self.module(input_ids=input_ids, attention_mask=attention_mask).logits[:count].float().cpu()
        seconds = time.perf_counter() - started
        if shape not in self.stats.shapes:
            self.stats.shapes.add(shape)
            self.stats.first_call_seconds += seconds
        self.stats.batches += 1
        self.stats.seconds += seconds
        return logits


def compiled_forward(model: torch.nn.Module) -> CompiledForward:
    """The model's compiled forward, built on first use and kept with the model (compiled graphs are reused by every
    later call)."""
    compiled = model.__dict__.get(_ATTRIBUTE)
    if compiled is None:
        compiled = model.__dict__[_ATTRIBUTE] = CompiledForward(model)
    return compiled


def compile_stats(model) -> CompileStats | None:
    """What the model's compiled forward has run so far, or None if it never ran compiled."""
    compiled = getattr(model, "__dict__", {}).get(_ATTRIBUTE)
    return None if compiled is None else compiled.stats


def compile_pays(model: torch.nn.Module, n_texts: int) -> bool:
    """Whether `compile=None` compiles: a long job, unquantized weights, on CUDA or on a CPU with native reduced
    precision (AMX / AVX-512 bf16) running bf16 or fp16 weights, and a C++ compiler for inductor's CPU kernels."""
    if n_texts < COMPILE_MIN_TEXTS or getattr(model, "is_quantized", False):
        return False
    parameter = next(model.parameters())
    if parameter.device.type == "cuda":
        return True
    native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    return parameter.device.type == "cpu" and native and compiler is not None and parameter.dtype in (
        torch.bfloat16, torch.float16)
