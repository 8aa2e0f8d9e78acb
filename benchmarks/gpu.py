"""One GPU run (issue 31, part 1): QLoRA and bf16 training cost, inference speed, correctness on CUDA, the
instruction approach's per-example cost and the machine's facts, in one script meant to fit 8 minutes on one H200.

    python benchmarks/gpu.py --output DIR                       # the GPU run: DIR/gpu.md and DIR/gpu.json
    python benchmarks/gpu.py --tiny --device cpu --output tmp   # the same code paths at tiny size (CI: ~35 s)

Every model is built from a config dict with random, seeded weights (no Hub, no network): the Llama-3.1-8B
architecture (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256, llama3 RoPE, theta
500000) or, with `--tiny`, a 2-layer Llama of width 64 over the tokenizer's vocabulary. The tokenizer is a byte-level
BPE trained here, in memory, on synthetic text (as tests/conftest.py does); texts are cut to 512 tokens (128 with
`--tiny`). The script imports torch, transformers, peft, bitsandbytes, tokenizers and hf_clf_ext's model, inference,
scoring and decoding modules: never TRL, datasets or evaluate, which the GPU machine lacks (gpu.json's `modules`
records it; tests/test_gpu_script.py runs the script with those three blocked).

Each measurement is a section of gpu.md and an entry of gpu.json's `sections`. Every section, and every configuration
inside one, is guarded: a failure records its error and the run goes on. Both files are rewritten after every
configuration, so a run killed at its time limit keeps what it measured.

1. `training_nf4`: the classifier over a 4-bit NF4 backbone (double quantization, bf16 compute), LoRA r=16 (alpha 32,
   dropout 0.05: recipes/configs/llama3.1_8b_last_token_r16.yaml) on q,k,v,o,gate,up,down, 512 tokens, micro-batch
   8 x 1 and 2 x 4 (effective batch 8), gradient checkpointing on and off, bitsandbytes 8-bit AdamW and paged 32-bit
   AdamW (8 settings, the most important first). Ours: `LastTokenClassifierForSequenceClassification.from_backbone`
   around the backbone with the trainer's pooling suffix, then `prepare_model_for_kbit_training` + `get_peft_model`
   as `last_token.adapters.prepare_peft` does (head in `modules_to_save`), two learning rates as the trainer's
   `create_optimizer`. Stock: `LlamaForSequenceClassification` (what `AutoModelForSequenceClassification` resolves
   to) + the same PEFT preparation, one learning rate. A plain loop does what `Trainer(bf16=True)` does: forward
   under bf16 autocast, backward, gradient clipping at 1.0, optimizer step; checkpointing is enabled as `Trainer`
   enables it (`activation_checkpointing_enable()`, use_reentrant=False). Per configuration: seconds per optimizer
   step (median of `--steps` steps after `--warmup`), peak allocated memory (`torch.cuda.max_memory_allocated`,
   reset per configuration), what was resident at its start, and the optimizer state's size (paged state is CUDA
   managed memory, outside PyTorch's allocator and so outside the peak: it is given separately).
2. `training_bf16`: the same grid on a bf16 backbone (no quantization, no k-bit preparation). `inference_bf16`:
   `classify_texts` examples/s against the raw backbone forward (`use_cache=False`) on the same 512-token batches,
   then `classify_texts(compile=True)` (hf_clf_ext/compiled.py) against eager, with the time its compilation took.
3. `correctness`: the head is a float32 `nn.Linear` (not 4-bit) over the NF4 backbone, and its trainable copy after
   k-bit preparation and PEFT is float32; a trained adapter saved with `save_pretrained` and loaded back with
   `PeftModel.from_pretrained` gives identical logits (8B); at tiny size on the same device, the trainer's path from
   a checkpoint folder (`from_backbone(path, quantization_config=NF4)`), stock `from_pretrained` of that folder (its
   head and quantization state must match what the stock wrapper of section 1 is given), and the package's adapter +
   head layout reloaded through `LastTokenClassifierForSequenceClassification.from_pretrained` with identical logits;
   padding invariance with SDPA (a text alone vs. in a left- and a right-padded batch, NF4 + adapter and bf16).
4. `instruction`: label scoring (`score_labels`, through `InstructionClassifier.classify(method="score")`) and
   constrained `generate` (`VerbalizerLogitsProcessor`) per example against the head's `classify_texts`, on the bf16
   causal LM whose backbone the head wraps, the default prompt through a chat template, prompts cut to 512 tokens.
5. `environment`: `nvidia-smi`, torch / CUDA / transformers / peft / bitsandbytes versions and paths, the GPU.

How the 8B models are built: random bf16 weights on the GPU (seeded), quantized to NF4 by transformers' own
bitsandbytes loading (`LlamaModel.from_pretrained(None, state_dict=..., quantization_config=...)`, no checkpoint on
disk), the bf16 model then freed and, after the NF4 sections, rebuilt (same seed) for sections 2 and 4. Ours and
stock wrap the same backbone object: after each configuration its LoRA layers are unloaded and the checkpointing
flags and input-gradient hooks removed, so one backbone is resident at a time. Estimates for one H200 (nothing here
has run on one yet): start-up and builds ~45 s, 16 NF4 configurations ~100-150 s, NF4 checks ~15 s, 16 bf16
configurations ~60-90 s, inference and instruction ~30 s, torch.compile of the 8B forward 60-120 s: 5-7 minutes.
`--budget_s` (450 by default on CUDA) is a soft deadline: configurations, checks and the compiled pass that would
not fit are recorded as skipped for time, the grid's tail first. On CPU, `--tiny` computes in float32 where the GPU
run uses bf16 (bf16 autocast on a CPU without native bf16 was measured ~75x slower), runs the first 4 settings
(every code path of the 8), paged optimizers fall back to plain ones (bitsandbytes), memory is the process's peak
resident set, and torch.compile uses its `eager` backend (dynamo without inductor's C++ build), as gpu.json notes.

The GPU machine (`run` tool, kind nvidia-h200: Python 3.12, torch 2.11+cu130, transformers 5.17, accelerate 1.15,
peft of unrecorded version; no bitsandbytes, TRL, datasets or evaluate; no network) gets these as wheels, 55.6 MiB
of the 64 MiB a call may carry: transformers 5.24.0 (13.5 MB: the package needs >=5.24, the `cache` keyword),
bitsandbytes 0.50.2 (43.1 MB, with CUDA 13.0 kernels), peft 0.21.2 (0.8 MB, the version tested here), regex 2026.5.9
(0.8 MB: transformers 5.24 checks regex>=2025.10.22 at import). Here, in the repository root:

    mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl transformers==5.24.0 peft==0.21.2 bitsandbytes==0.50.2 regex==2026.5.9

then `run` with carry [".whl"] and timeout_s 600:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    && export PYTHONPATH=/tmp/site || exit; nvidia-smi; set -o pipefail; PYTHONUNBUFFERED=1 timeout 560 python3
    benchmarks/gpu.py --output $OUT 2>&1 | tee $OUT/log.txt

(one line), and `give_back` after it. $OUT then holds gpu.md, gpu.json and log.txt.
"""

import argparse
import contextlib
import copy
import functools
import gc
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

# Nothing here reaches the Hub; quiet loading reports (set before transformers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*Paged optimizers are not supported on CPU.*")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # hf_clf_ext from this checkout: the GPU machine does not install it
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

FORBIDDEN_MODULES = ("trl", "datasets", "evaluate")  # absent on the GPU machine
LLAMA_3_1_8B = dict(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
)
# The same family at tiny size; 64 is the smallest width bitsandbytes' CPU 4-bit kernels accept (tests/conftest.py).
# The vocabulary is the tokenizer's.
TINY = dict(LLAMA_3_1_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=None)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05)  # recipes/configs/llama3.1_8b_last_token_r16.yaml
LEARNING_RATES = {"adapters": 1e-4, "head": 1e-3}  # the same recipe; stock uses one rate for everything
HEAD_MODULE = "score"
POOLING_SUFFIX = "\nLabel:"  # the trainer's default pooling suffix
LABELS = ["business", "sport", "politics", "tech"]
MAX_GRAD_NORM = 1.0  # Trainer's default clipping
# (micro-batch, accumulation, gradient checkpointing, optimizer), most important first: a run short of time drops
# the tail. Effective batch 8 everywhere.
GRID = [
    (8, 1, True, "adamw_8bit"),
    (8, 1, False, "adamw_8bit"),
    (8, 1, True, "paged_adamw_32bit"),
    (2, 4, True, "adamw_8bit"),
    (8, 1, False, "paged_adamw_32bit"),
    (2, 4, False, "adamw_8bit"),
    (2, 4, True, "paged_adamw_32bit"),
    (2, 4, False, "paged_adamw_32bit"),
]
QUICK_GRID = GRID[:4]
# Soft deadlines, as fractions of --budget_s, by which each stage must have started its last piece of work.
DEADLINES = {"training_nf4": 0.40, "correctness_nf4": 0.50, "training_bf16": 0.62, "inference_bf16": 0.70,
             "instruction": 0.75, "compile": 0.76}
COMPILE_RESERVE_S = 110  # what a compiled pass of the 8B forward needs after its start (compile ~60-120 s)
WORDS = (
    "the market shares rose sharply after the bank cut interest rates while the striker scored twice in the final "
    "match and the minister promised new election reforms as the film won an award at the festival for its music "
    "phones software chips and games sold well over the holiday season despite weak growth in europe"
).split()
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)
_QUANTIZATION_ATTRIBUTES = ("hf_quantizer", "is_quantized", "quantization_method", "is_loaded_in_4bit",
                            "is_loaded_in_8bit")


# --- bookkeeping -----------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, stage: str | None = None) -> float:
        """Seconds until `stage`'s deadline (the whole budget when None)."""
        fraction = 1.0 if stage is None else DEADLINES[stage]
        return self.budget_s * fraction - self.elapsed()


class Report:
    """gpu.json + gpu.md, rewritten after every section."""

    SECTIONS = [
        ("training_nf4", "1. QLoRA training: NF4 backbone (double quantization, bf16 compute), LoRA r=16"),
        ("training_bf16", "2a. bf16 training: the same grid without quantization"),
        ("inference_bf16", "2b. bf16 inference: classify_texts against the raw backbone, torch.compile on and off"),
        ("correctness", "3. Correctness"),
        ("instruction", "4. Instruction approach: label scoring and constrained generate per example"),
        ("environment", "5. Environment"),
    ]

    def __init__(self, output: Path, meta: dict):
        self.output = output
        output.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "sections": {key: {"title": title, "status": "not run"}
                                                for key, title in self.SECTIONS}}

    def section(self, key: str) -> dict:
        section = self.data["sections"][key]
        if section["status"] == "not run":
            section["status"] = "running"
        return section

    def attempt(self, key: str, where: str, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`, or None with the error recorded in section `key` (which is then 'error')."""
        section = self.section(key)
        tick = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - a failure is a result: record it and go on
            record_error(section, where, error)
            return None
        finally:
            section.setdefault("seconds", {})[where] = round(time.perf_counter() - tick, 2)
            free_memory()

    def finish(self, key: str, status: str | None = None) -> None:
        section = self.data["sections"][key]
        if status is not None:
            section["status"] = status
        elif section["status"] == "running":
            section["status"] = "ok"
        self.write()

    def write(self) -> None:
        self.data["meta"]["wall_seconds"] = round(time.perf_counter() - self.data["meta"]["_t0"], 1)
        payload = {key: value for key, value in self.data["meta"].items() if not key.startswith("_")}
        document = {"meta": payload, "sections": self.data["sections"], "modules": module_facts()}
        (self.output / "gpu.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
        try:
            markdown = render_markdown(document)
        except Exception as error:  # noqa: BLE001 - a report bug must not cost the run: gpu.json has everything
            markdown = (f"# GPU run\n\ngpu.md could not be rendered ({type(error).__name__}: {error}); "
                        f"the results are in gpu.json.\n")
        (self.output / "gpu.md").write_text(markdown)


def record_error(section: dict, where: str, error: BaseException) -> None:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    section.setdefault("errors", []).append({"where": where, "error": f"{type(error).__name__}: {error}"[:2000],
                                             "traceback": "".join(lines)[-4000:]})
    section["status"] = "error"
    print(f"[gpu.py] {where}: {type(error).__name__}: {str(error)[:500]}", file=sys.stderr, flush=True)


def module_facts() -> dict:
    import importlib.util

    def spec(name):
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    return {
        "forbidden": list(FORBIDDEN_MODULES),
        "forbidden_imported": [name for name in FORBIDDEN_MODULES if sys.modules.get(name) is not None],
        "forbidden_importable": [name for name in FORBIDDEN_MODULES if spec(name)],
        "imported_of_interest": sorted(name for name in ("transformers", "peft", "bitsandbytes", "tokenizers",
                                                         "accelerate", "hf_clf_ext", "sklearn", "matplotlib")
                                       if sys.modules.get(name) is not None),
    }


def log(message: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory over a block: CUDA `max_memory_allocated` (reset at entry), or on CPU the process's peak resident
    set (Linux VmHWM, reset at entry through /proc/self/clear_refs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process peak RSS (VmHWM)"

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            gc.collect()
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.kind = "process peak RSS since start (VmHWM could not be reset)"
            self.start = _status_bytes("VmRSS") or 0
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_bytes("VmHWM") or 0
        return False


def gib(n_bytes) -> float:
    return round(n_bytes / 2**30, 3)


def allocated_gib(ctx) -> float | None:
    return gib(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else None


# --- inputs ----------------------------------------------------------------------------------------------------------


def build_tokenizer():
    """A byte-level BPE trained here on synthetic text (no Hub), with pad/eos/unk and a small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=rng.randint(4, 30))) + rng.choice([".", "!", "?", ""]) for _ in range(400)]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_texts(count: int, words: int, seed: int) -> list[str]:
    """Texts of `words` words (well over 512 tokens), each ending with a different word."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=words - 1) + [WORDS[i % len(WORDS)]]) + "." for i in range(count)]


def llama_config(ctx):
    from transformers import LlamaConfig

    dims = dict(TINY if ctx.args.tiny else LLAMA_3_1_8B)
    if dims["vocab_size"] is None:
        dims["vocab_size"] = len(ctx.tokenizer)
    return LlamaConfig(**dims, pad_token_id=ctx.tokenizer.pad_token_id, eos_token_id=ctx.tokenizer.eos_token_id,
                       bos_token_id=None)


def projection_parameters(config) -> int:
    """Parameters of the decoder's projections (the matmuls a token goes through), for FLOP estimates."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return config.num_hidden_layers * (attention + 3 * hidden * inter)


# --- models ----------------------------------------------------------------------------------------------------------


def build_causal_lm(ctx):
    """A Llama causal LM with random (seeded) weights in the run's weight dtype, built on the device."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(ctx.args.seed)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(ctx.config), dtype=ctx.weight_dtype,
                                                 attn_implementation="sdpa")
    return model.eval()


def nf4_config(ctx):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=ctx.compute_dtype)


def quantize_backbone(ctx, causal):
    """The causal LM's decoder quantized to NF4 by transformers' own bitsandbytes loading, from its state dict."""
    from transformers import LlamaModel

    state = {key[len("model."):]: value for key, value in causal.state_dict().items() if key.startswith("model.")}
    kwargs = dict(config=copy.deepcopy(ctx.config), state_dict=state, quantization_config=nf4_config(ctx),
                  dtype=ctx.weight_dtype, attn_implementation="sdpa")
    if ctx.device.type == "cuda":
        kwargs["device_map"] = {"": ctx.device.index or 0}
    return cpu_exact(LlamaModel.from_pretrained(None, **kwargs).eval())


def cpu_exact(model):
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights in place at the first inference forward, their
    scales rounded to bf16, and unpacks them at every `state_dict()` (PEFT's save and unload call it): each round
    trip changes the backbone (seen: logits moved by 2e-2). Off here, so the CPU run's checks compare like with like;
    CUDA never repacks."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def ours_around(ctx, model):
    """Our classifier around a loaded backbone (or causal LM), with the trainer's default pooling suffix."""
    from hf_clf_ext import LastTokenClassifierForSequenceClassification

    classifier = LastTokenClassifierForSequenceClassification.from_backbone(model, labels=LABELS,
                                                                           tokenizer=ctx.tokenizer)
    classifier.config.suffix_token_ids = ctx.suffix_ids
    classifier.config.pooling_suffix = POOLING_SUFFIX
    return classifier


def stock_around(ctx, backbone, quantized_from=None):
    """`LlamaForSequenceClassification` around the same backbone object, as `from_pretrained(..., dtype=,
    quantization_config=)` leaves it: the head a plain `nn.Linear` in the load dtype, the backbone's quantization
    state on the model (section 3 checks this against a real from_pretrained at tiny size). That state is read from
    `quantized_from` (default: the backbone, as `LlamaModel.from_pretrained` leaves it)."""
    from transformers import LlamaForSequenceClassification

    config = copy.deepcopy(backbone.config)
    config.num_labels = len(LABELS)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    config.pad_token_id = ctx.tokenizer.pad_token_id
    with torch.device("meta"):
        stock = LlamaForSequenceClassification(config)
    stock.model = backbone
    device = next(backbone.parameters()).device
    stock.score = nn.Linear(config.hidden_size, len(LABELS), bias=False, device=device, dtype=ctx.weight_dtype)
    nn.init.normal_(stock.score.weight, std=config.initializer_range)
    source = backbone if quantized_from is None else quantized_from
    for name in _QUANTIZATION_ATTRIBUTES:
        if hasattr(source, name):
            setattr(stock, name, getattr(source, name))
    return stock


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="SEQ_CLS", target_modules=list(LORA_TARGETS), modules_to_save=[HEAD_MODULE], **LORA)


def wrap_for_training(wrapper, quantized: bool, checkpointing: bool):
    """PEFT as `last_token.adapters.prepare_peft` wraps a model (k-bit preparation for a 4-bit backbone), then
    checkpointing as `Trainer` enables it (`activation_checkpointing_enable()`: use_reentrant=False)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        wrapper = prepare_model_for_kbit_training(wrapper, use_gradient_checkpointing=checkpointing)
    model = get_peft_model(wrapper, lora_config())
    if checkpointing:
        enable = getattr(wrapper, "activation_checkpointing_enable", None) or wrapper.gradient_checkpointing_enable
        enable()
    return model


def restore_backbone(peft_model, backbone) -> None:
    """Undo what training set on the shared backbone: LoRA layers, checkpointing flags, input-gradient hooks."""
    if peft_model is not None:
        peft_model.unload()
    for module in backbone.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False
    embeddings = backbone.get_input_embeddings()
    for key, hook in list(embeddings._forward_hooks.items()):
        if getattr(hook, "__name__", "").startswith("make_inputs_require_grad"):
            del embeddings._forward_hooks[key]
    leftovers = [name for name, _ in backbone.named_modules() if "lora_" in name]
    if leftovers:
        raise RuntimeError(f"LoRA modules left in the shared backbone: {leftovers[:3]}")


def make_optimizer(name: str, groups: list[dict]):
    import bitsandbytes as bnb

    # What Trainer builds for optim="adamw_8bit" / "paged_adamw_32bit" (bnb AdamW, 8-bit / paged 32-bit states).
    cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit}[name]
    return cls(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def optimizer_state_bytes(optimizer) -> tuple[int, int]:
    """(bytes on the device / host allocator, bytes in CUDA managed memory: paged state)."""
    plain = paged = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                if getattr(value, "is_paged", False):
                    paged += value.numel() * value.element_size()
                else:
                    plain += value.numel() * value.element_size()
    return plain, paged


# --- section 1 and 2a: training --------------------------------------------------------------------------------------


def training_batches(ctx, micro_batch: int, ours: bool, count: int = 4) -> list[dict]:
    """`count` distinct micro-batches of full-length rows: 512 tokens into the backbone (ours: 512 minus the pooling
    suffix, which the model appends)."""
    length = ctx.args.seq_len - (len(ctx.suffix_ids) if ours else 0)
    texts = ctx.texts[: micro_batch * count]
    ids = ctx.tokenizer(texts, truncation=True, max_length=length)["input_ids"]
    if min(map(len, ids)) != length:
        raise RuntimeError(f"Training texts are shorter than {length} tokens.")
    generator = torch.Generator().manual_seed(ctx.args.seed)
    batches = []
    for start in range(0, len(ids), micro_batch):
        input_ids = torch.tensor(ids[start : start + micro_batch])
        labels = torch.randint(0, len(LABELS), (len(input_ids),), generator=generator)
        batches.append({"input_ids": input_ids.to(ctx.device),
                        "attention_mask": torch.ones_like(input_ids).to(ctx.device), "labels": labels.to(ctx.device)})
    return batches


def train_configuration(ctx, backbone, who: str, spec: tuple, quantized: bool) -> dict:
    micro_batch, accumulation, checkpointing, optimizer_name = spec
    device, args = ctx.device, ctx.args
    row = {"model": who, "micro_batch": micro_batch, "accumulation": accumulation,
           "gradient_checkpointing": checkpointing, "optimizer": optimizer_name}
    started = time.perf_counter()
    peft_model = None
    try:
        wrapper = ours_around(ctx, backbone) if who == "ours" else stock_around(ctx, backbone)
        peft_model = wrap_for_training(wrapper, quantized, checkpointing)
        peft_model.train()
        trainable = [(name, p) for name, p in peft_model.named_parameters() if p.requires_grad]
        if who == "ours":  # two learning rates, as LastTokenTrainer.create_optimizer
            head = [p for name, p in trainable if f".{HEAD_MODULE}." in f".{name}"]
            rest = [p for name, p in trainable if f".{HEAD_MODULE}." not in f".{name}"]
            groups = [{"params": rest, "lr": LEARNING_RATES["adapters"]},
                      {"params": head, "lr": LEARNING_RATES["head"]}]
        else:
            groups = [{"params": [p for _, p in trainable], "lr": LEARNING_RATES["adapters"]}]
        params = [p for _, p in trainable]
        row["trainable_parameters"] = sum(p.numel() for p in params)
        row["trainable_dtypes"] = sorted({str(p.dtype).removeprefix("torch.") for p in params})
        optimizer = make_optimizer(optimizer_name, groups)
        batches = training_batches(ctx, micro_batch, who == "ours")
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if ctx.amp else contextlib.nullcontext()
        seconds, losses = [], []
        with PeakMemory(device) as memory:
            for step in range(args.warmup + args.steps):
                synchronize(device)
                tick = time.perf_counter()
                total = 0.0
                for micro in range(accumulation):
                    batch = batches[(step * accumulation + micro) % len(batches)]
                    with amp:
                        loss = peft_model(**batch).loss / accumulation
                    loss.backward()
                    total = total + loss.detach()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                synchronize(device)
                seconds.append(time.perf_counter() - tick)
                losses.append(float(total))
        steady = seconds[args.warmup :]
        plain, paged = optimizer_state_bytes(optimizer)
        tokens = micro_batch * accumulation * args.seq_len
        step_s = statistics.median(steady)
        flops = (6 if checkpointing else 4) * ctx.projection_parameters * tokens
        row.update({
            "status": "ok",
            "seconds_per_step": round(step_s, 4),
            "step_seconds": [round(s, 4) for s in seconds],
            "warmup_steps": args.warmup,
            "tokens_per_second": round(tokens / step_s, 1),
            "approx_tflops_per_second": round(flops / step_s / 1e12, 2),
            "peak_gib": gib(memory.peak),
            "resident_at_start_gib": gib(memory.start),
            "peak_over_start_gib": gib(memory.peak - memory.start),
            "optimizer_state_mib": round(plain / 2**20, 1),
            "optimizer_paged_state_mib": round(paged / 2**20, 1),
            "losses": [round(x, 4) for x in losses],
            "losses_finite": all(math.isfinite(x) for x in losses),
        })
        del optimizer, batches, params, trainable, groups
    finally:
        row["seconds_total"] = round(time.perf_counter() - started, 2)
        try:
            restore_backbone(peft_model, backbone)
        finally:
            peft_model = wrapper = None
            free_memory()
    return row


def training_grid(ctx, report: Report, key: str, backbone, quantized: bool) -> None:
    section = report.section(key)
    section.update({
        "precision": "NF4 weights, double quantization, compute " + str(ctx.compute_dtype).removeprefix("torch.")
        if quantized else "weights " + str(ctx.weight_dtype).removeprefix("torch."),
        "autocast": "bf16" if ctx.amp else "off (float32 compute)",
        "sequence_length": ctx.args.seq_len,
        "lora": {**LORA, "target_modules": list(LORA_TARGETS), "modules_to_save": [HEAD_MODULE]},
        "learning_rates": LEARNING_RATES,
        "memory_kind": PeakMemory(ctx.device).kind,
        "flops_note": "approx: (4, or 6 with checkpointing) x projection parameters x tokens; attention not counted",
        "notes": ["stock keeps its config's use_cache=True, as loaded and as Trainer leaves it: without checkpointing "
                  "its training forward also fills a KV cache (ours never builds one)",
                  "paged optimizer state is CUDA managed memory, outside PyTorch's allocator: not in peak_gib; "
                  "optimizer_paged_state_mib gives its size",
                  "peak_gib includes everything resident (backbone, adapters, float32 casts of k-bit preparation)"],
        "runs": [],
    })
    grid = QUICK_GRID if ctx.args.grid == "quick" else GRID
    last = 0.0  # the longest configuration so far: ours and stock of a setting run as a pair, or neither
    for spec in grid:
        fits = ctx.clock.left(key) >= 2 * 1.2 * last
        for who in ("ours", "stock"):
            setting = {"model": who, "micro_batch": spec[0], "accumulation": spec[1],
                       "gradient_checkpointing": spec[2], "optimizer": spec[3]}
            if not fits:
                section["runs"].append({**setting, "status": "skipped", "reason": "time budget (--budget_s)"})
                continue
            log(f"{key}: {who} {spec}")
            try:
                row = train_configuration(ctx, backbone, who, spec, quantized)
            except Exception as error:  # noqa: BLE001 - e.g. out of memory: record it, go on with the next
                row = {**setting, "status": "error", "error": f"{type(error).__name__}: {error}"[:1000]}
                print(f"[gpu.py] {key} {who} {spec}: {row['error']}", file=sys.stderr, flush=True)
                del error
                free_memory()
            last = max(last, row.get("seconds_total", 0.0))
            section["runs"].append(row)
            if row.get("status") == "ok":
                log(f"  {row['seconds_per_step']:.3f} s/step, peak {row['peak_gib']:.2f} GiB")
            report.write()
    section["ratios"] = training_ratios(section["runs"])
    statuses = {row["status"] for row in section["runs"]}
    if statuses - {"ok"} and section["status"] == "running":
        section["status"] = "partial"


def training_ratios(runs: list[dict]) -> list[dict]:
    """ours / stock at each setting: step time and peak memory."""
    by_key = {}
    for row in runs:
        if row.get("status") == "ok":
            by_key[(row["micro_batch"], row["accumulation"], row["gradient_checkpointing"], row["optimizer"],
                    row["model"])] = row
    ratios = []
    for (mb, acc, gc_, opt, who), row in by_key.items():
        stock = by_key.get((mb, acc, gc_, opt, "stock"))
        if who == "ours" and stock is not None:
            ratios.append({"micro_batch": mb, "accumulation": acc, "gradient_checkpointing": gc_, "optimizer": opt,
                           "time_ours_over_stock": round(row["seconds_per_step"] / stock["seconds_per_step"], 3),
                           "peak_ours_over_stock": round(row["peak_gib"] / stock["peak_gib"], 3)
                           if stock["peak_gib"] else None})
    return ratios


# --- section 2b: inference -------------------------------------------------------------------------------------------


def backbone_batches(ctx, texts: list[str], batch_size: int) -> list[dict]:
    """The batches `classify_texts` gives the backbone: longest first, suffix after the real tokens, right padded."""
    encoded = [ids + list(ctx.suffix_ids) for ids in ctx.head_tokenizer(texts, truncation=True)["input_ids"]]
    encoded.sort(key=len, reverse=True)
    batches = []
    for start in range(0, len(encoded), batch_size):
        padded = ctx.head_tokenizer.pad({"input_ids": encoded[start : start + batch_size]}, return_tensors="pt")
        batches.append({key: value.to(ctx.device) for key, value in padded.items()})
    return batches


def timed(ctx, fn) -> float:
    synchronize(ctx.device)
    tick = time.perf_counter()
    fn()
    synchronize(ctx.device)
    return time.perf_counter() - tick


@contextlib.contextmanager
def compile_backend(name: str):
    """torch.compile with another backend than inductor inside the block (CPU runs: dynamo without the C++ build)."""
    if name == "inductor":
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=name)
    try:
        yield
    finally:
        torch.compile = original


def inference_eager(ctx, section: dict, classifier) -> dict:
    from hf_clf_ext import classify_texts

    args = ctx.args
    texts = ctx.texts[: args.texts]
    batch = args.batch_size
    batches = backbone_batches(ctx, texts, batch)
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    section.update({"texts": len(texts), "batch_size": batch, "tokens_per_example": round(sum(tokens) / len(texts), 1),
                    "passes": args.passes, "subjects": {}})

    def predict():
        return classify_texts(classifier, ctx.head_tokenizer, texts, batch_size=batch, compile=False)

    def backbone():  # no KV cache, as the classifier's own forward runs its backbone
        with torch.no_grad():
            for b in batches:
                classifier.model(**b, use_cache=False)

    subjects = {"classify_texts": predict, "backbone_forward": backbone}
    for fn in subjects.values():  # warm-up: kernels, allocator, cuBLAS handles
        timed(ctx, fn)
    seconds = {name: [] for name in subjects}
    peaks = {}
    for index in range(args.passes):  # alternating passes, the order rotating each round
        order = list(subjects) if index % 2 == 0 else list(subjects)[::-1]
        for name in order:
            with PeakMemory(ctx.device) as memory:
                seconds[name].append(timed(ctx, subjects[name]))
            peaks[name] = max(peaks.get(name, 0), memory.peak)
    flops = 2 * ctx.projection_parameters * section["tokens_per_example"]
    for name, values in seconds.items():
        median = statistics.median(values)
        section["subjects"][name] = {"examples_per_second": round(len(texts) / median, 2),
                                     "pass_seconds": [round(v, 4) for v in values],
                                     "approx_tflops_per_second": round(flops * len(texts) / median / 1e12, 2),
                                     "peak_gib": gib(peaks[name])}
    rates = {name: entry["examples_per_second"] for name, entry in section["subjects"].items()}
    ratio = rates["classify_texts"] / rates["backbone_forward"]
    section["ratios"] = {"predict / raw backbone forward": round(ratio, 3)}
    return {"predict": predict, "texts": texts}


def inference_compiled(ctx, section: dict, classifier, eager: dict) -> None:
    from hf_clf_ext import classify_texts
    from hf_clf_ext.last_token.compiled import compile_stats

    args = ctx.args
    texts = eager["texts"]
    backend = args.compile_backend
    section["compile_backend"] = backend

    def compiled():
        return classify_texts(classifier, ctx.head_tokenizer, texts, batch_size=args.batch_size, compile=True)

    with compile_backend(backend):
        first = timed(ctx, compiled)  # compiles every shape it meets (one: batch x 512)
        stats = compile_stats(classifier)
        reference = eager["predict"]()
        got = compiled()
        seconds = {"predict_texts_compiled": [], "classify_texts": []}
        for index in range(args.passes):
            order = list(seconds) if index % 2 == 0 else list(seconds)[::-1]
            for name in order:
                seconds[name].append(timed(ctx, compiled if name == "predict_texts_compiled" else eager["predict"]))
    difference = max(abs(a["probabilities"][k] - b["probabilities"][k]) for a, b in zip(reference, got)
                     for k in a["probabilities"])
    entry = {"examples_per_second": round(len(texts) / statistics.median(seconds["predict_texts_compiled"]), 2),
             "pass_seconds": [round(v, 4) for v in seconds["predict_texts_compiled"]],
             "first_pass_seconds_with_compilation": round(first, 2),
             "compile_stats": str(stats) if stats is not None else None,
             "max_probability_difference_vs_eager": float(difference)}
    section["subjects"]["predict_texts_compiled"] = entry
    eager_again = len(texts) / statistics.median(seconds["classify_texts"])
    section["subjects"]["classify_texts"]["examples_per_second_alongside_compiled"] = round(eager_again, 2)
    section["ratios"]["predict compiled / predict eager"] = round(entry["examples_per_second"] / eager_again, 3)
    section["ratios"]["predict compiled / raw backbone forward (eager)"] = round(
        entry["examples_per_second"] / section["subjects"]["backbone_forward"]["examples_per_second"], 3)


# --- section 4: instruction ------------------------------------------------------------------------------------------


def instruction_costs(ctx, section: dict, causal, classifier) -> None:
    from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer, classify_texts
    from hf_clf_ext.instruction.prompt_cache import SharedPrefix

    args = ctx.args
    texts = ctx.texts[: args.instruction_texts]
    batch = args.batch_size
    tokenizer = copy.deepcopy(ctx.tokenizer)
    instruction = InstructionClassifier(causal, tokenizer, InstructionPrompt(), Verbalizer(LABELS),
                                        max_length=args.seq_len)
    prompts = instruction.prompt_ids(texts)
    shared = len(SharedPrefix.encode(causal, prompts).ids)
    section.update({
        "texts": len(texts), "batch_size": batch,
        "prompt": "InstructionPrompt() through the tokenizer's chat template",
        "labels": LABELS, "label_tokens": [len(ids) for ids in instruction.tokens.first],
        "prompt_tokens_mean": round(statistics.mean(map(len, prompts)), 1), "shared_prefix_tokens": shared,
        "max_answer_tokens": instruction.max_answer_length,
    })

    def head(rows):
        return classify_texts(classifier, ctx.head_tokenizer, rows, batch_size=batch, compile=False)

    subjects = {
        "head": head,
        "score": lambda rows: instruction.classify(rows, method="score", batch_size=batch),
        "generate": lambda rows: instruction.classify(rows, method="generate", batch_size=batch),
    }
    for fn in subjects.values():  # warm-up on one batch each
        timed(ctx, lambda: fn(texts[:batch]))
    seconds = {name: [] for name in subjects}
    outputs = {}
    for index in range(args.passes):  # alternating passes, the order reversed every other round
        order = list(subjects) if index % 2 == 0 else list(subjects)[::-1]
        for name in order:
            synchronize(ctx.device)
            tick = time.perf_counter()
            outputs[name] = subjects[name](texts)
            synchronize(ctx.device)
            seconds[name].append(time.perf_counter() - tick)
    per_example = {name: statistics.median(values) / len(texts) for name, values in seconds.items()}
    section["seconds_per_example"] = {name: round(value, 6) for name, value in per_example.items()}
    section["pass_seconds"] = {name: [round(v, 4) for v in values] for name, values in seconds.items()}
    head_cost = per_example["head"]
    section["ratios"] = {"label scoring cost / head cost": round(per_example["score"] / head_cost, 3),
                         "constrained generate cost / head cost": round(per_example["generate"] / head_cost, 3)}
    scored = outputs["score"]
    generated = outputs["generate"]
    section["answers_valid"] = all(row["label"] in LABELS for row in generated)
    section["score_rows_sum_to_one"] = all(abs(sum(row["probabilities"].values()) - 1) < 1e-3 for row in scored)
    section["generate_agrees_with_score"] = round(
        sum(a["label"] == b["label"] for a, b in zip(generated, scored)) / len(texts), 3)


# --- section 3: correctness ------------------------------------------------------------------------------------------


def probe_batch(ctx, lengths=None) -> list[list[int]]:
    """Token ids (suffix not included: the model appends it) of texts of clearly different lengths."""
    lengths = lengths or (ctx.args.seq_len // 14, ctx.args.seq_len // 4, ctx.args.seq_len * 3 // 5)
    ids = ctx.head_tokenizer(ctx.texts[-len(lengths):], truncation=True)["input_ids"]
    return [row[:length] for row, length in zip(ids, lengths)]


def logits_of(ctx, model, rows: list[list[int]], side: str = "right") -> torch.Tensor:
    tokenizer = ctx.head_tokenizer
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    finally:
        tokenizer.padding_side = previous
    with torch.no_grad():
        return model(**{key: value.to(ctx.device) for key, value in batch.items()}).logits.float().cpu()


def check_padding(ctx, model, where: str) -> dict:
    """Each text alone vs. inside a left- and a right-padded batch (SDPA). A float32 model must agree to float32
    rounding. In bf16 the padded batch runs other kernels and matmul shapes, so rounding differs: the check passes when
    the difference is within 8x the rounding noise of a shape change alone (the text next to a copy of itself, no
    padding) or a quarter of the gap between different texts' logits, which is what a wrong position or pooled token
    would move a row by."""
    model.eval()
    rows = probe_batch(ctx)
    alone = torch.cat([logits_of(ctx, model, [row]) for row in rows])
    left, right = logits_of(ctx, model, rows, "left"), logits_of(ctx, model, rows, "right")
    doubled = torch.cat([logits_of(ctx, model, [row, row])[:1] for row in rows])
    gaps = [float((alone[i] - alone[j]).abs().max()) for i in range(len(rows)) for j in range(i + 1, len(rows))]
    gap = statistics.median(gaps)
    noise = float((doubled - alone).abs().max())
    float32 = ctx.compute_dtype == torch.float32
    tolerance = 1e-4 * max(1.0, float(alone.abs().max())) if float32 else max(8 * noise, 0.25 * gap)
    left_diff, right_diff = float((left - alone).abs().max()), float((right - alone).abs().max())
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {"where": where, "attn_implementation": getattr(config, "_attn_implementation", None),
            "lengths": [len(row) + len(ctx.suffix_ids) for row in rows],
            "left_padded_max_abs_diff": left_diff, "right_padded_max_abs_diff": right_diff,
            "shape_change_noise": noise, "different_texts_median_gap": gap,
            "diff_over_gap": max(left_diff, right_diff) / gap if gap else None, "tolerance": tolerance,
            "passed": bool(torch.isfinite(alone).all()) and max(left_diff, right_diff) <= tolerance}


def check_head_nf4(ctx, backbone) -> tuple[dict, object]:
    """The head under an NF4 backbone, as the trainer builds and prepares it."""
    import bitsandbytes as bnb

    classifier = ours_around(ctx, backbone)
    q_proj = backbone.layers[0].self_attn.q_proj
    facts = {
        "head_type": type(classifier.score).__name__,
        "head_dtype_after_from_backbone": str(classifier.score.weight.dtype),
        "is_loaded_in_4bit": bool(getattr(classifier, "is_loaded_in_4bit", False)),
        "q_proj_type": type(q_proj).__name__,
        "quant_type": getattr(q_proj.weight.quant_state, "quant_type", None),
        "double_quant": bool(getattr(q_proj.weight, "compress_statistics", False)),
        "compute_dtype": str(q_proj.compute_dtype),
    }
    peft_model = wrap_for_training(classifier, quantized=True, checkpointing=False)
    head = {name: p for name, p in peft_model.named_parameters() if f".{HEAD_MODULE}." in f".{name}"}
    trainable_head = [p for name, p in head.items() if p.requires_grad]
    lora = [p for name, p in peft_model.named_parameters() if "lora_" in name]
    facts.update({
        "head_parameters_after_peft": {name: str(p.dtype) for name, p in head.items()},
        "trainable_head_dtype": sorted({str(p.dtype) for p in trainable_head}),
        "lora_dtypes": sorted({str(p.dtype) for p in lora}),
    })
    amp = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if ctx.amp else contextlib.nullcontext()
    rows = probe_batch(ctx)
    batch = ctx.head_tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    with torch.no_grad(), amp:
        logits = peft_model(**{key: value.to(ctx.device) for key, value in batch.items()}).logits
    # Under bf16 autocast the float32 head's matmul runs in bf16: recorded, not judged.
    facts["logits_dtype_in_training_forward"] = str(logits.dtype)
    facts["passed"] = (
        facts["head_type"] == "Linear" and not isinstance(classifier.score, bnb.nn.Linear4bit)
        and facts["head_dtype_after_from_backbone"] == "torch.float32" and facts["is_loaded_in_4bit"]
        and facts["q_proj_type"] == "Linear4bit" and facts["quant_type"] == "nf4" and facts["double_quant"]
        and facts["trainable_head_dtype"] == ["torch.float32"] and len(trainable_head) == 1
        and facts["lora_dtypes"] == ["torch.float32"]
    )
    return facts, peft_model


def nudge(ctx, peft_model, steps: int = 3) -> None:
    """A few large optimizer steps, so that LoRA B and the head move away from their initial values."""
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    batch = training_batches(ctx, 2, ours=True, count=1)[0]
    amp = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if ctx.amp else contextlib.nullcontext()
    for _ in range(steps):
        with amp:
            loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peft_model.eval()


def check_adapter_round_trip(ctx, peft_model, backbone, work: Path) -> tuple[dict, object]:
    """save_pretrained, a fresh classifier around the same backbone, PeftModel.from_pretrained: same logits."""
    from peft import PeftModel
    from safetensors import safe_open

    nudge(ctx, peft_model)
    rows = probe_batch(ctx)
    expected = logits_of(ctx, peft_model, rows)
    with peft_model.disable_adapter():
        without = logits_of(ctx, peft_model, rows)
    folder = work / "adapter_nf4"
    peft_model.save_pretrained(folder)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    restore_backbone(peft_model, backbone)
    reloaded = PeftModel.from_pretrained(ours_around(ctx, backbone), folder).eval()
    got = logits_of(ctx, reloaded, rows)
    difference = float((got - expected).abs().max())
    facts = {"adapter_mib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 1),
             "saved_head": any(f".{HEAD_MODULE}." in key for key in keys),
             "saved_lora": any("lora_" in key for key in keys),
             "max_abs_diff": difference, "identical": bool(torch.equal(got, expected)),
             "adapter_changes_logits_by": float((expected - without).abs().max())}
    facts["passed"] = facts["saved_head"] and facts["saved_lora"] and difference <= 1e-5 and \
        facts["adapter_changes_logits_by"] > 10 * max(difference, 1e-6)
    return facts, reloaded


def check_layout_round_trip(ctx, work: Path) -> dict:
    """At tiny size, on this device: the trainer's path from a checkpoint folder (`from_backbone(path,
    quantization_config=NF4)`), the stock `AutoModelForSequenceClassification.from_pretrained` of the same folder
    (whose head and quantization state the stock wrapper of section 1 copies), and the package's adapter + head
    layout (adapter in `adapter/`, the base and its quantization named in config.json) reloaded through
    `LastTokenClassifierForSequenceClassification.from_pretrained`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    from hf_clf_ext import LastTokenClassifierForSequenceClassification
    from hf_clf_ext.last_token.modeling_last_token import ADAPTER_SUBFOLDER

    dims = dict(TINY, vocab_size=len(ctx.tokenizer))
    config = LlamaConfig(**dims, pad_token_id=ctx.tokenizer.pad_token_id, eos_token_id=ctx.tokenizer.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(ctx.args.seed)
    base = work / "tiny_base"
    AutoModelForCausalLM.from_config(config, dtype=ctx.weight_dtype).save_pretrained(base)
    ctx.tokenizer.save_pretrained(base)
    load = dict(quantization_config=nf4_config(ctx), dtype=ctx.weight_dtype, attn_implementation="sdpa")
    if ctx.device.type == "cuda":
        load["device_map"] = {"": ctx.device.index or 0}
    ours = cpu_exact(LastTokenClassifierForSequenceClassification.from_backbone(str(base), labels=LABELS,
                                                                               tokenizer=ctx.tokenizer, **load))
    ours.config.suffix_token_ids, ours.config.pooling_suffix = ctx.suffix_ids, POOLING_SUFFIX
    stock = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=len(LABELS), **load)
    wrapped = stock_around(ctx, ours.model, quantized_from=ours)
    facts = {
        "ours_head": f"{type(ours.score).__name__} {ours.score.weight.dtype}",
        "ours_is_loaded_in_4bit": bool(getattr(ours, "is_loaded_in_4bit", False)),
        "stock_class": type(stock).__name__,
        "stock_head": f"{type(stock.score).__name__} {stock.score.weight.dtype}",
        "stock_wrapper_head": f"{type(wrapped.score).__name__} {wrapped.score.weight.dtype}",
        "stock_is_loaded_in_4bit": bool(getattr(stock, "is_loaded_in_4bit", False)),
        "stock_wrapper_is_loaded_in_4bit": bool(getattr(wrapped, "is_loaded_in_4bit", False)),
    }
    del stock, wrapped
    peft_model = get_peft_model(ours, lora_config())
    nudge(ctx, peft_model)
    rows = probe_batch(ctx, lengths=(9, 21, 40))
    expected = logits_of(ctx, peft_model, rows)
    # The trainer's save (LastTokenTrainer._save): adapter + head in adapter/, the base and its
    # quantization in config.json, which `from_pretrained` reads to load the base again.
    folder = work / "tiny_saved"
    peft_model.save_pretrained(folder / ADAPTER_SUBFOLDER)
    config_out = copy.deepcopy(ours.config)
    config_out.architectures = [type(ours).__name__]
    quantization = config_out.__dict__.pop("quantization_config", None)
    config_out.adapter_subfolder = ADAPTER_SUBFOLDER
    config_out.base_model_name_or_path = str(base)
    config_out.base_quantization_config = quantization.to_dict() if quantization is not None else None
    config_out.save_pretrained(folder)
    reload_kwargs = {"device_map": load["device_map"]} if "device_map" in load else {}
    reloaded = cpu_exact(LastTokenClassifierForSequenceClassification.from_pretrained(
        str(folder), dtype=ctx.weight_dtype, **reload_kwargs).eval())
    got = logits_of(ctx, reloaded, rows)
    facts.update({"reloaded_is_loaded_in_4bit": bool(getattr(reloaded, "is_loaded_in_4bit", False)),
                  "reloaded_head_dtype": str(reloaded.score.modules_to_save["default"].weight.dtype)
                  if hasattr(reloaded.score, "modules_to_save") else str(reloaded.score.weight.dtype),
                  "max_abs_diff": float((got - expected).abs().max())})
    facts["passed"] = (
        facts["ours_head"] == "Linear torch.float32" and facts["ours_is_loaded_in_4bit"]
        and facts["stock_class"] == "LlamaForSequenceClassification"
        and facts["stock_head"] == facts["stock_wrapper_head"]
        and facts["stock_is_loaded_in_4bit"] == facts["stock_wrapper_is_loaded_in_4bit"] is True
        and facts["reloaded_is_loaded_in_4bit"] and facts["max_abs_diff"] <= 1e-5
    )
    return facts


def add_check(report: Report, name: str, fn, *args):
    """Run one correctness check into section 3; its result (a dict with `passed`), or None on error."""
    section = report.section("correctness")
    checks = section.setdefault("checks", {})
    tick = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as error:  # noqa: BLE001
        record_error(section, name, error)
        checks[name] = {"passed": False, "error": f"{type(error).__name__}: {error}"[:1000]}
        del error
        free_memory()
        report.write()
        return None
    facts, extra = result if isinstance(result, tuple) else (result, None)
    facts["seconds"] = round(time.perf_counter() - tick, 2)
    checks[name] = facts
    log(f"correctness {name}: {'PASS' if facts.get('passed') else 'FAIL'}")
    report.write()
    return extra if isinstance(result, tuple) else facts


# --- section 5: environment ------------------------------------------------------------------------------------------


def environment(ctx) -> dict:
    import importlib.metadata

    facts = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
             "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "device": str(ctx.device), "threads": torch.get_num_threads()}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "safetensors", "regex",
                 "huggingface_hub", "numpy"):
        try:
            module = __import__(name)
            facts[name] = getattr(module, "__version__", None) or importlib.metadata.version(name)
            facts[f"{name}_path"] = str(Path(module.__file__).parent)
        except Exception as error:  # noqa: BLE001
            facts[name] = f"unavailable: {type(error).__name__}: {error}"[:300]
    try:
        from packaging.version import Version

        facts["transformers_meets_pin"] = Version(facts["transformers"]) >= Version("5.24")
    except Exception:  # noqa: BLE001
        facts["transformers_meets_pin"] = None
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        facts.update({"gpu": torch.cuda.get_device_name(ctx.device), "capability": f"{props.major}.{props.minor}",
                      "gpu_memory_gib": gib(props.total_memory), "multiprocessors": props.multi_processor_count,
                      "cudnn": torch.backends.cudnn.version(), "bf16_supported": torch.cuda.is_bf16_supported(),
                      "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                      "sdpa_flash_enabled": torch.backends.cuda.flash_sdp_enabled(),
                      "sdpa_mem_efficient_enabled": torch.backends.cuda.mem_efficient_sdp_enabled()})
    else:
        facts["gpu"] = "skipped on cpu: no CUDA device in this run"
    if shutil.which("nvidia-smi") and ctx.device.type == "cuda":
        try:
            query = ("name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                     "temperature.gpu,power.draw,power.limit")
            done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=30)
            facts["nvidia_smi_query"] = query
            facts["nvidia_smi"] = (done.stdout.strip() or done.stderr.strip())[:1000]
        except Exception as error:  # noqa: BLE001
            facts["nvidia_smi"] = f"failed: {type(error).__name__}: {error}"[:300]
    else:
        facts["nvidia_smi"] = ("skipped on cpu: no GPU in this run" if ctx.device.type == "cpu"
                               else "nvidia-smi not found")
    for path in ("/tmp", "/dev/shm"):
        with contextlib.suppress(OSError):
            facts[f"disk_free_gib {path}"] = gib(shutil.disk_usage(path).free)
    facts["memtotal_gib"] = gib((_status_meminfo("MemTotal") or 0))
    return facts


def _status_meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- the run ---------------------------------------------------------------------------------------------------------


class Context:
    pass


def phase_nf4(ctx, report: Report, work: Path) -> None:
    causal = report.attempt("training_nf4", "build the bf16 model", build_causal_lm, ctx)
    if causal is None:
        report.finish("training_nf4")
        return
    tick = time.perf_counter()
    backbone = report.attempt("training_nf4", "quantize to NF4", quantize_backbone, ctx, causal)
    report.section("training_nf4")["quantize_seconds"] = round(time.perf_counter() - tick, 2)
    del causal
    free_memory()
    if backbone is None:
        report.finish("training_nf4")
        return
    report.section("training_nf4")["backbone_gib"] = gib(backbone.get_memory_footprint())
    report.section("training_nf4")["allocated_before_grid_gib"] = allocated_gib(ctx)
    if "training" in ctx.args.sections:
        report.attempt("training_nf4", "grid", training_grid, ctx, report, "training_nf4", backbone, True)
        report.finish("training_nf4")
    else:
        report.finish("training_nf4", "not run (--sections)")
    if "correctness" in ctx.args.sections and ctx.clock.left("correctness_nf4") > 0:
        peft_model = add_check(report, "head_float32_under_nf4", check_head_nf4, ctx, backbone)
        if peft_model is not None:
            reloaded = add_check(report, "adapter_round_trip_nf4", check_adapter_round_trip, ctx, peft_model,
                                 backbone, work)
            if reloaded is None:
                with contextlib.suppress(Exception):
                    restore_backbone(peft_model, backbone)
            else:
                add_check(report, "padding_invariance_nf4", check_padding, ctx, reloaded, "NF4 + adapter")
                with contextlib.suppress(Exception):
                    restore_backbone(reloaded, backbone)
            peft_model = reloaded = None
        add_check(report, "adapter_head_layout_round_trip_tiny", check_layout_round_trip, ctx, work)
    elif "correctness" in ctx.args.sections:
        report.section("correctness").setdefault("skipped", []).append("NF4 checks: time budget (--budget_s)")
    del backbone
    free_memory()


def phase_bf16(ctx, report: Report) -> None:
    sections = ctx.args.sections
    report.section("training_bf16")["allocated_before_build_gib"] = allocated_gib(ctx)  # 0 unless NF4 leaked
    causal = report.attempt("training_bf16", "build the bf16 model", build_causal_lm, ctx)
    if causal is None:
        for key in ("training_bf16", "inference_bf16", "instruction"):
            report.section(key)
            report.data["sections"][key]["status"] = "error"
            report.data["sections"][key].setdefault("errors", []).append({"where": "build", "error": "no bf16 model"})
        report.finish("training_bf16")
        return
    report.section("training_bf16")["backbone_gib"] = gib(causal.model.get_memory_footprint())
    if "training" in sections:
        report.attempt("training_bf16", "grid", training_grid, ctx, report, "training_bf16", causal.model, False)
        report.finish("training_bf16")
    else:
        report.finish("training_bf16", "not run (--sections)")
    classifier = report.attempt("inference_bf16", "build the classifier", ours_around, ctx, causal)
    eager = None
    if classifier is not None and "inference" in sections:
        if ctx.clock.left("inference_bf16") > 0:
            section = report.section("inference_bf16")
            section["precision"] = str(ctx.weight_dtype).removeprefix("torch.")
            eager = report.attempt("inference_bf16", "eager", inference_eager, ctx, section, classifier)
        else:
            report.section("inference_bf16")["skipped"] = "time budget (--budget_s)"
    report.write()
    if classifier is not None and "instruction" in sections:
        if ctx.clock.left("instruction") > 0:
            report.attempt("instruction", "costs", instruction_costs, ctx, report.section("instruction"), causal,
                           classifier)
            report.finish("instruction")
        else:
            report.finish("instruction", "skipped: time budget (--budget_s)")
    if classifier is not None and "correctness" in sections:
        add_check(report, "padding_invariance_bf16", check_padding, ctx, classifier, "bf16")
    if classifier is not None and eager is not None and "compile" in sections:
        left, reserve = ctx.clock.left("compile"), (COMPILE_RESERVE_S if ctx.device.type == "cuda" else 0)
        if left > 0 and ctx.clock.left() > reserve:
            report.attempt("inference_bf16", "compiled", inference_compiled, ctx, report.section("inference_bf16"),
                           classifier, eager)
        else:
            report.section("inference_bf16")["compiled"] = (
                f"skipped: time budget (--budget_s; {ctx.clock.left():.0f} s left, the compiled pass needs {reserve})")
    if report.data["sections"]["inference_bf16"]["status"] == "running" and \
            "predict_texts_compiled" not in report.data["sections"]["inference_bf16"].get("subjects", {}) and \
            "compile" in sections:
        report.data["sections"]["inference_bf16"]["status"] = "partial"
    report.finish("inference_bf16", None if "inference" in sections else "not run (--sections)")
    del classifier, causal
    free_memory()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_run", help="Folder for gpu.md and gpu.json.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="A 2-layer Llama of width 64 instead of the 8B shape.")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="Soft deadline in seconds (default 450 on CUDA, none on CPU).")
    parser.add_argument("--steps", type=int, default=None, help="Timed optimizer steps per configuration (3; tiny 2).")
    parser.add_argument("--warmup", type=int, default=None, help="Warm-up steps per configuration (1).")
    parser.add_argument("--grid", choices=("full", "quick"), default=None,
                        help="All 8 settings x ours/stock, or the first 4, which take every code path (full; tiny "
                             "quick).")
    parser.add_argument("--seq_len", type=int, default=None, help="Tokens per example (512; tiny 128).")
    parser.add_argument("--texts", type=int, default=None, help="Inference texts (64; tiny 16).")
    parser.add_argument("--instruction_texts", type=int, default=None, help="Instruction texts (32; tiny 8).")
    parser.add_argument("--batch_size", type=int, default=None, help="Inference batch (16; tiny 8).")
    parser.add_argument("--passes", type=int, default=3, help="Timed inference passes per subject.")
    parser.add_argument("--compile_backend", default=None,
                        help="torch.compile backend of the compiled pass (inductor on CUDA, eager on CPU).")
    parser.add_argument("--sections", nargs="+",
                        default=["training", "inference", "compile", "instruction", "correctness"],
                        choices=["training", "inference", "compile", "instruction", "correctness"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.budget_s is None:
        args.budget_s = 450.0 if cuda else float("inf")
    defaults = dict(steps=(2, 3), warmup=(1, 1), texts=(16, 64), instruction_texts=(8, 32), batch_size=(8, 16),
                    seq_len=(128, 512), grid=("quick", "full"))
    for name, (tiny, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.compile_backend is None:
        args.compile_backend = "inductor" if cuda else "eager"
    return args


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no CUDA device.")
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    ctx = Context()
    ctx.args, ctx.device, ctx.clock = args, device, Clock(args.budget_s)
    ctx.amp = device.type == "cuda"
    ctx.weight_dtype = ctx.compute_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    notes = []
    if device.type == "cpu":
        notes += ["float32 compute where the GPU run uses bf16 (bf16 autocast on CPUs without native bf16 ran ~75x "
                  "slower than float32, hf_clf_ext/jobs.py): the NF4 compute dtype, the 'bf16' backbone and the "
                  "training loop (no autocast) are float32",
                  "paged AdamW falls back to plain AdamW states on CPU (bitsandbytes)",
                  "memory is the process's peak resident set, not CUDA allocations",
                  f"torch.compile backend '{args.compile_backend}' (dynamo tracing without inductor's C++ build)"]
    meta = {"script": "benchmarks/gpu.py", "argv": sys.argv[1:] if argv is None else list(argv),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "tiny": args.tiny, "architecture": "Llama (tiny: 2 layers, width 64)" if args.tiny
            else "Llama-3.1-8B (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256, "
                 "llama3 RoPE theta 500000)",
            "weights": "random (seeded), built from a config dict: no Hub", "weight_dtype": str(ctx.weight_dtype),
            "compute_dtype": str(ctx.compute_dtype), "autocast": "bf16" if ctx.amp else "off",
            "sequence_length": args.seq_len, "budget_s": args.budget_s if math.isfinite(args.budget_s) else None,
            "steps": args.steps, "warmup": args.warmup,
            "notes": notes, "_t0": t0}
    report = Report(Path(args.output), meta)
    log(f"device {device}, tiny={args.tiny}, output {args.output}")

    ctx.tokenizer = build_tokenizer()
    ctx.suffix_ids = ctx.tokenizer(POOLING_SUFFIX, add_special_tokens=False)["input_ids"]
    ctx.head_tokenizer = copy.deepcopy(ctx.tokenizer)  # classify_texts truncates to the training length minus suffix
    ctx.head_tokenizer.model_max_length = args.seq_len - len(ctx.suffix_ids)
    ctx.texts = make_texts(max(args.texts, args.instruction_texts, 32) + 3, words=args.seq_len + 200, seed=args.seed)
    ctx.config = llama_config(ctx)
    ctx.projection_parameters = projection_parameters(ctx.config)
    meta["projection_parameters"] = ctx.projection_parameters
    meta["model_config"] = {key: value for key, value in ctx.config.to_dict().items()
                            if key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads", "vocab_size", "max_position_embeddings",
                                       "rope_parameters", "rms_norm_eps", "tie_word_embeddings")}

    env = report.attempt("environment", "facts", environment, ctx)
    if env is not None:
        report.section("environment").update(env)
        meta["gpu"] = env.get("gpu") if device.type == "cuda" else f"CPU run ({platform.machine()})"
    report.finish("environment")
    log(f"environment: torch {torch.__version__}, transformers {(env or {}).get('transformers')}, "
        f"bitsandbytes {(env or {}).get('bitsandbytes')}, gpu {(env or {}).get('gpu')}")

    work = Path(tempfile.mkdtemp(prefix="hf_clf_gpu_"))
    try:
        meta["phase_seconds"] = {}
        for name, phase, key, phase_args in (("nf4", phase_nf4, "training_nf4", (ctx, report, work)),
                                             ("bf16", phase_bf16, "training_bf16", (ctx, report))):
            tick = time.perf_counter()
            try:
                phase(*phase_args)
            except Exception as error:  # noqa: BLE001 - whatever a phase missed: recorded, the next phase runs
                record_error(report.section(key), f"{name} phase", error)
                del error
                free_memory()
            meta["phase_seconds"][name] = round(time.perf_counter() - tick, 1)
            report.write()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    correctness = report.data["sections"]["correctness"]
    checks = correctness.get("checks", {})
    correctness["all_passed"] = bool(checks) and all(check.get("passed") for check in checks.values())
    if correctness["status"] == "running":
        correctness["status"] = "ok"
    for key, section in report.data["sections"].items():
        if section["status"] == "running":
            section["status"] = "ok"
    report.write()
    log(f"done in {time.perf_counter() - t0:.0f} s: {args.output}/gpu.md")
    print(summary(report), flush=True)
    return 0


# --- gpu.md ----------------------------------------------------------------------------------------------------------


def _fmt(value, digits=3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _status_line(section: dict) -> list[str]:
    lines = [f"Status: **{section['status']}**"]
    for error in section.get("errors", []):
        lines.append(f"- error in {error['where']}: `{error['error'][:300]}`")
    for skipped in section.get("skipped", []) if isinstance(section.get("skipped"), list) else \
            ([section["skipped"]] if section.get("skipped") else []):
        lines.append(f"- skipped: {skipped}")
    return lines + [""]


def _training_md(section: dict) -> list[str]:
    lines = _status_line(section)
    if "precision" in section:
        lines += [f"{section['precision']}; autocast {section['autocast']}; {section['sequence_length']} tokens; LoRA "
                  f"r={section['lora']['r']} alpha={section['lora']['lora_alpha']} on "
                  f"{', '.join(section['lora']['target_modules'])}, head trained; memory: {section['memory_kind']}.",
                  ""] + [f"- {note}" for note in section.get("notes", [])] + [""]
    runs = section.get("runs", [])
    if runs:
        lines += ["| model | batch x accum | checkpointing | optimizer | s / step | tokens/s | ~TFLOP/s | peak GiB | "
                  "resident GiB | optimizer MiB (paged) | status |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in runs:
            ok = row.get("status") == "ok"
            lines.append(
                f"| {row['model']} | {row['micro_batch']} x {row['accumulation']} | "
                f"{'on' if row['gradient_checkpointing'] else 'off'} | {row['optimizer']} | "
                f"{_fmt(row.get('seconds_per_step')) if ok else '-'} | {_fmt(row.get('tokens_per_second'), 0)} | "
                f"{_fmt(row.get('approx_tflops_per_second'), 1)} | {_fmt(row.get('peak_gib'), 2)} | "
                f"{_fmt(row.get('resident_at_start_gib'), 2)} | {_fmt(row.get('optimizer_state_mib'), 1)} "
                f"({_fmt(row.get('optimizer_paged_state_mib'), 1)}) | "
                f"{row.get('status')}{': ' + (row.get('reason') or row.get('error', ''))[:120] if not ok else ''} |")
        lines.append("")
    if section.get("ratios"):
        lines += ["ours / stock at each setting:", "", "| batch x accum | checkpointing | optimizer | time | peak |",
                  "| --- | --- | --- | --- | --- |"]
        for ratio in section["ratios"]:
            lines.append(f"| {ratio['micro_batch']} x {ratio['accumulation']} | "
                         f"{'on' if ratio['gradient_checkpointing'] else 'off'} | {ratio['optimizer']} | "
                         f"{_fmt(ratio['time_ours_over_stock'])} | {_fmt(ratio['peak_ours_over_stock'])} |")
        lines.append("")
    return lines


def render_markdown(document: dict) -> str:
    meta, sections = document["meta"], document["sections"]
    env = sections["environment"]
    lines = [f"# GPU run: {meta.get('gpu') or meta['device']}", "",
             f"{meta['started']}, {meta['wall_seconds']} s; device {meta['device']}; torch {env.get('torch')} (CUDA "
             f"{env.get('torch_cuda')}), transformers {env.get('transformers')}, peft {env.get('peft')}, "
             f"bitsandbytes {env.get('bitsandbytes')}.", "",
             f"Model: {meta['architecture']}; {meta['weights']}; weights {meta['weight_dtype']}, compute "
             f"{meta['compute_dtype']}, autocast {meta['autocast']}; {meta['sequence_length']} tokens; timed steps "
             f"{meta['steps']} after {meta['warmup']} warm-up.", ""]
    lines += [f"- note: {note}" for note in meta.get("notes", [])]
    modules = document["modules"]
    lines += [f"- modules: {', '.join(modules['forbidden'])} imported: "
              f"{', '.join(modules['forbidden_imported']) or 'none'}", ""]
    for key in ("training_nf4", "training_bf16"):
        lines += [f"## {sections[key]['title']}", ""] + _training_md(sections[key])
    inference = sections["inference_bf16"]
    lines += [f"## {inference['title']}", ""] + _status_line(inference)
    if inference.get("subjects"):
        lines += [f"{inference['texts']} texts, {inference['tokens_per_example']} tokens each (suffix included), "
                  f"batch {inference['batch_size']}, median of {inference['passes']} passes.", "",
                  "| subject | examples/s | ~TFLOP/s | pass seconds | peak GiB |", "| --- | --- | --- | --- | --- |"]
        for name, entry in inference["subjects"].items():
            passes = ", ".join(_fmt(s, 3) for s in entry["pass_seconds"])
            lines.append(f"| {name} | {_fmt(entry['examples_per_second'], 2)} | "
                         f"{_fmt(entry.get('approx_tflops_per_second'), 1)} | {passes} | "
                         f"{_fmt(entry.get('peak_gib'), 2)} |")
        lines.append("")
        compiled = inference["subjects"].get("predict_texts_compiled")
        if compiled:
            lines += [f"Compiled ({inference.get('compile_backend')}): first pass "
                      f"{compiled['first_pass_seconds_with_compilation']} s with compilation; "
                      f"{compiled['compile_stats']}; max probability difference vs eager "
                      f"{compiled['max_probability_difference_vs_eager']:.2e}.", ""]
        if inference.get("compiled"):
            lines += [f"Compiled pass: {inference['compiled']}", ""]
        lines += [f"- {name}: {_fmt(value)}" for name, value in inference.get("ratios", {}).items()] + [""]
    correctness = sections["correctness"]
    lines += [f"## {correctness['title']}", ""] + _status_line(correctness)
    if correctness.get("checks"):
        lines += [f"All passed: **{correctness.get('all_passed')}**", "", "| check | result | facts |",
                  "| --- | --- | --- |"]
        for name, facts in correctness["checks"].items():
            detail = "; ".join(f"{k}={_fmt(v, 6) if isinstance(v, float) else v}" for k, v in facts.items()
                               if k != "passed")
            lines.append(f"| {name} | {'PASS' if facts.get('passed') else 'FAIL'} | {detail[:700]} |")
        lines.append("")
    instruction = sections["instruction"]
    lines += [f"## {instruction['title']}", ""] + _status_line(instruction)
    if instruction.get("seconds_per_example"):
        lines += [f"{instruction['texts']} texts, prompts {instruction['prompt_tokens_mean']} tokens on average "
                  f"({instruction['shared_prefix_tokens']} shared, encoded once), batch {instruction['batch_size']}, "
                  f"labels of {instruction['label_tokens']} tokens.", "",
                  "| method | s / example | x head |", "| --- | --- | --- |"]
        head = instruction["seconds_per_example"]["head"]
        for name, value in instruction["seconds_per_example"].items():
            lines.append(f"| {name} | {value:.5f} | {value / head:.3f} |")
        lines += ["", f"Answers valid: {instruction['answers_valid']}; score rows sum to 1: "
                      f"{instruction['score_rows_sum_to_one']}; generate names the most probable scored label for "
                      f"{instruction['generate_agrees_with_score']} of the texts (random weights).", ""]
    lines += [f"## {env['title']}", ""] + _status_line(env)
    lines += [f"- {key}: {value}" for key, value in env.items() if key not in ("title", "status", "errors")] + [""]
    return "\n".join(lines)


def summary(report: Report) -> str:
    """A short table for the end of the log (the run tool returns the output's tail)."""
    sections = report.data["sections"]
    out = ["", "== gpu.py summary =="]
    for key, section in sections.items():
        out.append(f"{key}: {section['status']}")
    for key in ("training_nf4", "training_bf16"):
        for row in sections[key].get("runs", []):
            if row.get("status") == "ok":
                out.append(f"  {key} {row['model']:5} {row['micro_batch']}x{row['accumulation']} "
                           f"gc={'on ' if row['gradient_checkpointing'] else 'off'} {row['optimizer']:17} "
                           f"{row['seconds_per_step']:.3f} s/step  peak {row['peak_gib']:.2f} GiB")
            else:
                out.append(f"  {key} {row['model']} {row['micro_batch']}x{row['accumulation']} {row['status']}")
    for name, entry in sections["inference_bf16"].get("subjects", {}).items():
        out.append(f"  inference {name}: {entry['examples_per_second']} examples/s")
    for name, value in sections["instruction"].get("seconds_per_example", {}).items():
        out.append(f"  instruction {name}: {value:.5f} s/example")
    for name, facts in sections["correctness"].get("checks", {}).items():
        out.append(f"  correctness {name}: {'PASS' if facts.get('passed') else 'FAIL'}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
