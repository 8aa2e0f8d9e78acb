"""Tiny decoder-only models of several families, built from configs with a tokenizer trained here (no Hub access).

Everything is built once per test session and saved as ordinary causal-LM folders, so tests exercise the same
`from_pretrained` paths users take.
"""

import os

# Nothing here reaches the Hub: resolve repo ids from local caches only (set before huggingface_hub is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (the README's test command runs two workers on a 2-core machine) each worker, and every process
# a test starts, computes on one thread: two workers of two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
# A process that aborts (SIGABRT, SIGSEGV) prints each thread's Python stack: a launched job's rare abort at its exit
# ("terminate called without an active exception" in one of two FSDP processes, 1 of the suite's runs on 2026-12-05)
# then says where that process was.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import hashlib
import itertools
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>"]
WORDS = (
    "the market shares rose sharply after the bank cut interest rates while the striker scored twice in the final "
    "match and the minister promised new election reforms as the film won an award at the festival for its music "
    "phones software chips and games sold well over the holiday season despite weak growth in europe"
).split()

# 64 is the smallest width bitsandbytes' CPU 4-bit inference kernels accept (32 fails inside bitsandbytes).
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 30))) + rng.choice([".", "!", "?", ""]) for _ in range(n)]


def _train_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory):
    """Two saved tokenizers over one vocabulary: `"pad"` has its own pad token, `"pad_is_eos"` pads with eos
    (as SmolLM2 and Llama 3 do)."""
    raw = _train_tokenizer()
    dirs = {}
    for name, pad in (("pad", "<pad>"), ("pad_is_eos", "<eos>")):
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token=pad, unk_token="<unk>")
        path = tmp_path_factory.mktemp(f"tokenizer_{name}")
        tokenizer.save_pretrained(path)
        dirs[name] = path
    return dirs


def _tiny_config(family: str, vocab_size: int, pad_token_id: int, eos_token_id: int):
    ids = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None)
    if family == "llama":
        return LlamaConfig(**TINY_DIMS, **ids)
    if family == "qwen2":
        return Qwen2Config(**TINY_DIMS, **ids, use_sliding_window=False)
    if family == "gemma3":
        # Alternating sliding/full attention with a window shorter than the test texts.
        return Gemma3TextConfig(
            **TINY_DIMS, **ids, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
    if family == "gpt2":
        # Learned absolute positions: padding invariance needs position ids computed from the attention mask
        # (rotary families are translation-invariant and would not notice).
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=512, **ids)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "gemma3", "gpt2")


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory, tokenizer_dirs):
    """One saved tiny causal LM (with its tokenizer) per family and tokenizer variant, random but seeded."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    dirs = {}
    for family, variant in itertools.product(FAMILIES, tokenizer_dirs):
        torch.manual_seed(0)
        pad_id = tokenizer.convert_tokens_to_ids("<pad>" if variant == "pad" else "<eos>")
        config = _tiny_config(family, len(tokenizer), pad_id, tokenizer.convert_tokens_to_ids("<eos>"))
        model = AutoModelForCausalLM.from_config(config)
        path = tmp_path_factory.mktemp(f"{family}_{variant}")
        model.save_pretrained(path)
        PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs[variant]).save_pretrained(path)
        dirs[family, variant] = path
    return dirs


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_lm_dir(tiny_lm_dirs, family):
    return tiny_lm_dirs[family, "pad"]


@pytest.fixture
def tokenizer(tokenizer_dirs):
    """The tokenizer of every tiny model (all families share one vocabulary), with its own pad token."""
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])


@pytest.fixture
def texts():
    """Texts of clearly different lengths, so batches need padding."""
    return [
        "the bank cut interest rates",
        "the striker scored twice in the final match and the film won an award at the festival",
        "phones sold well!",
    ]


def publish(folder, repo_id: str, hub_cache) -> str:
    """Lay `folder` out as a Hub repo in the cache layout the Hub client reads (`models--org--name/snapshots/<hash>/`,
    `refs/main`), so that `HF_HUB_CACHE=hub_cache HF_HUB_OFFLINE=1` resolves `repo_id` exactly as a download would."""
    org, name = repo_id.split("/")
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = Path(hub_cache) / f"models--{org}--{name}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return repo_id


def run_fresh(code: str, hub_cache=None) -> dict:
    """Run `code` in a fresh Python process (offline, reading `hub_cache` as the Hub) and return the JSON object it
    prints on a line of its own after `RESULT `."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(hub_cache)
        env["HF_MODULES_CACHE"] = str(Path(hub_cache) / "modules")  # remote code copied from this cache only
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(results[-1])


@pytest.fixture
def hub_cache(tmp_path):
    path = tmp_path / "hub"
    path.mkdir()
    return path


@pytest.fixture
def data_files(tmp_path):
    """Train / validation / test CSV files of `testing_utils.synthetic` rows."""
    from testing_utils import synthetic

    files = {}
    for split, (rows, seed) in {"train": (48, 1), "validation": (18, 2), "test": (24, 3)}.items():
        files[split] = tmp_path / f"{split}.csv"
        synthetic(rows, seed=seed).to_csv(files[split])
    return files
