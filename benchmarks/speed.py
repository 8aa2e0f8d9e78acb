"""Speed and peak memory, in one run on one machine, as ratios (SmolLM2-135M-Instruct, BBC News test articles).

    python benchmarks/speed.py                                   # all but vLLM (2-3 hours on 2 CPU cores, 21 GiB)
    python benchmarks/speed.py --examples 64 --subjects head_predict backbone_forward   # a quick look
    python benchmarks/speed.py --subjects train_ours train_stock --merge    # re-measure two, keep the other results
    python benchmarks/speed.py --merge --examples 128 --train_repeats 1 --subjects head_predict head_predict_compiled \
        backbone_forward backbone_forward_compiled vllm_offline train_ours train_ours_compiled train_stock \
        train_stock_compiled --vllm_python /opt/vllm-venv/bin/python      # the compiled path, the ceiling, vLLM
    python benchmarks/speed.py --profile_training       # where two steady training steps go, eager and compiled

Inference subjects that are compared with each other run in one process, in alternating passes (the order rotates
each round), after one warm-up batch each: on a shared VM the speed of one process differs from the next by 10-20%,
more than the ratios resolve. An inference speed is the median of `--repeats` passes. Each training run is a fresh
process; at 256 tokens the subjects run `--train_repeats` times, round-robin, and the median run is kept. Peak memory
is the process's peak resident memory during the subject's passes (peak allocated GPU memory on CUDA), the weights of
every model in the process included; "extra" is that peak minus what was resident when the pass began: the subject's
own working memory.

Weights are bf16 where the hardware computes in bf16 natively (CUDA, AVX-512 / AMX CPUs) and float32 elsewhere
(`--dtype`), as our trainer does. Next to speeds, the inference group measures the rate of the model's own matrix
products (`F.linear` on 16 x 256 tokens with each projection's weight shape, in the run's dtype): the ceiling the
achieved FLOP rate (FLOPs of each article's forward at its own length, per second) is held against. Compiled subjects
compile in their warm-up, whose time is reported. `vllm_offline` runs the stock export of the same classifier in
vLLM's own virtualenv (`--vllm_python`) on the same token ids. Where the compiled path misses its targets, the report
ends with profiler tables of the top ops of eager and compiled `classify_texts`.
"""

import argparse
import ctypes
import functools
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from baselines import machine, stock_classifier, stock_encode, stock_training_arguments

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LAST_TOKEN_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml"
INSTRUCTION_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_instruction.yaml"
SHORT, LONG = 256, 1024
BATCH = 16
TRAIN_PER_CLASS = 80  # 400 training articles
TRAIN_STEPS = 12  # one length-grouping mega-batch at batch 8 (see the docstring)

# Inference subjects measured together, in alternating passes within one process (the ratios below compare them).
INTERLEAVED = [["head_predict", "head_predict_compiled", "backbone_forward", "backbone_forward_compiled",
                "stock_forward", "head_predict_unsorted", "instruction_generate", "instruction_score"],
               ["head_predict_long", "head_predict_unsorted_long"]]
INFERENCE = [name for group in INTERLEAVED for name in group]
SERVING = ["vllm_offline"]  # its own process (and virtualenv)
TRAINING = ["train_ours", "train_stock", "train_ours_grouped", "train_stock_grouped", "train_ours_long",
            "train_stock_long", "train_ours_grouped_long", "train_stock_grouped_long", "train_ours_compiled",
            "train_stock_compiled"]
SUBJECT_NAMES = INFERENCE + SERVING + TRAINING
PROFILED = ["head_predict", "head_predict_compiled"]
PROFILED_TRAINING = ["train_ours", "train_ours_compiled"]  # --profile_training: two steady steps, own process
COMPILE_STEPS = 2  # training steps that may compile (first shape, then a dynamic-shape graph); "steady" skips them
DTYPE = torch.float32  # set by main() from --dtype

# (name, numerator, denominator, how the ratio is read, target[, speed key]): ratio = speed(numerator) /
# speed(denominator), both measured in the same run; training with compile is compared on its steady steps.
STEADY = "steady_examples_per_second"
RATIOS = [
    ("predict / raw backbone forward", "head_predict", "backbone_forward", ">=", 0.97),
    ("predict compiled / raw backbone forward (eager)", "head_predict_compiled", "backbone_forward", ">=", 1.5),
    ("predict compiled / predict eager", "head_predict_compiled", "head_predict", None, None),
    ("raw backbone compiled / eager", "backbone_forward_compiled", "backbone_forward", None, None),
    ("ours (predict) / vLLM offline classify, 256 tokens", "head_predict", "vllm_offline", ">=", 1.0),
    ("predict / stock ForSequenceClassification", "head_predict", "stock_forward", None, None),
    ("length-sorted / unsorted, 256 tokens", "head_predict", "head_predict_unsorted", ">=", 1.5),
    ("length-sorted / unsorted, 1024 tokens", "head_predict_long", "head_predict_unsorted_long", ">=", 1.5),
    ("label scoring cost / head cost", "head_predict", "instruction_score", "<=", 1.3),
    ("constrained generate cost / head cost", "head_predict", "instruction_generate", "<=", 2.0),
    ("training: ours / stock, 256 tokens", "train_ours", "train_stock", ">=", 1.0),
    ("training: ours grouped / stock, 256 tokens", "train_ours_grouped", "train_stock", ">=", 1.3),
    ("training: ours grouped / stock grouped, 256 tokens", "train_ours_grouped", "train_stock_grouped", None, None),
    ("training: ours / stock, 1024 tokens", "train_ours_long", "train_stock_long", ">=", 1.0),
    ("training: ours grouped / stock, 1024 tokens", "train_ours_grouped_long", "train_stock_long", ">=", 1.3),
    ("training: ours grouped / stock grouped, 1024 tokens", "train_ours_grouped_long", "train_stock_grouped_long",
     None, None),
    ("training compiled / eager, ours (steady steps)", "train_ours_compiled", "train_ours", ">=", 1.3, STEADY),
    ("training compiled / eager, stock (steady steps)", "train_stock_compiled", "train_stock", None, None, STEADY),
    ("training compiled: ours / stock (steady steps)", "train_ours_compiled", "train_stock_compiled", None, None,
     STEADY),
]
CEILING_TARGET = 0.5  # achieved FLOP rate of predict / the model-shaped matmul rate


# --- measuring -------------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of the block (`gib`) and how far it rose above the memory in use at entry (`extra_gib`): CUDA
    allocations, or the process's resident set (Linux VmHWM, reset at entry through /proc/self/clear_refs)."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**30
        else:
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so that the start is what is in use
            Path("/proc/self/clear_refs").write_text("5")
            self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.gib = self._status("VmHWM")
        self.extra_gib = self.gib - self.start

    @staticmethod
    def _status(field: str) -> float:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**20


def interleaved(functions: dict, warmups: dict, repeats: int) -> dict:
    """Per function, the median of `repeats` timed passes (and their spread), after one warm-up each. The functions
    take turns, in an order that rotates every round, so that drifts in the machine's speed reach all of them."""
    warmup_seconds = {}
    for name, warmup in warmups.items():
        started = time.perf_counter()
        warmup()
        warmup_seconds[name] = time.perf_counter() - started
    names = list(functions)
    speeds = {name: [] for name in names}
    memory = {name: (0.0, 0.0) for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            with PeakMemory() as peak:
                started = time.perf_counter()
                count = functions[name]()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                speeds[name].append(count / (time.perf_counter() - started))
            memory[name] = max(memory[name][0], peak.gib), max(memory[name][1], peak.extra_gib)
    return {name: {**_summary(count, speeds[name], *memory[name]), "warmup_seconds": warmup_seconds[name]}
            for name in names}


def _summary(count: int, speeds: list[float], memory_gib: float, extra_gib: float) -> dict:
    return {"examples": count, "examples_per_second": statistics.median(speeds), "passes": speeds,
            "seconds": count / statistics.median(speeds), "peak_memory_gib": memory_gib,
            "extra_memory_gib": extra_gib}


# --- inference subjects ----------------------------------------------------------------------------------------------


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _bbc_test():
    """The fixed test split, read once per process (subjects ask for it while setting up and for the label names)."""
    from hf_clf_ext.bundled import bbc_news_splits

    return bbc_news_splits(train_per_class=20, validation_per_class=20)["test"]


def _test_texts(examples: int) -> tuple[list[str], list[str]]:
    test = _bbc_test()
    return list(test["text"][:examples]), test.features["label"].names


@functools.cache
def _classifier(max_length: int):
    """Our classifier as users deploy it (merged weights, the run's dtype), with the embedded default's pooling
    suffix; one per process, shared by the subjects that run in it."""
    from transformers import AutoTokenizer

    from hf_clf_ext import LastTokenClassifierForSequenceClassification
    from hf_clf_ext.bundled import smollm2_model_dir

    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, names = _test_texts(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(path, labels=names, tokenizer=tokenizer,
                                                                       dtype=DTYPE).to(_device())
    model.config.suffix_token_ids = tokenizer("\nTopic:", add_special_tokens=False)["input_ids"]
    tokenizer.model_max_length = max_length - len(model.config.suffix_token_ids)
    return model.eval(), tokenizer


def _predict(max_length: int, sort: bool, compile: bool = False):
    from hf_clf_ext import classify_texts

    def subject(texts):
        model, tokenizer = _classifier(max_length)
        if sort:
            return lambda batch: len(classify_texts(model, tokenizer, batch, batch_size=BATCH, compile=compile))
        return lambda batch: sum(len(classify_texts(model, tokenizer, batch[i : i + BATCH], batch_size=BATCH))
                                 for i in range(0, len(batch), BATCH))
    return subject


def _backbone_batches(tokenizer, suffix: list[int], texts: list[str], device) -> list[dict]:
    """The batches `classify_texts` gives the backbone: longest first, suffix after the real tokens, right padded."""
    encoded = [ids + suffix for ids in tokenizer(texts, truncation=True)["input_ids"]]
    encoded.sort(key=len, reverse=True)
    batches = []
    for start in range(0, len(encoded), BATCH):
        padded = tokenizer.pad({"input_ids": encoded[start : start + BATCH]}, return_tensors="pt")
        batches.append({key: value.to(device) for key, value in padded.items()})
    return batches


def _forward(model, batches) -> int:
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    return sum(len(batch["input_ids"]) for batch in batches)


def _pretokenized(tokenizer, suffix, texts):
    """Forward passes only: the warm-up's and the timed run's batches are built before the clock starts."""
    prepared = {n: _backbone_batches(tokenizer, suffix, texts[:n], _device()) for n in {BATCH, len(texts)}}
    return lambda model: (lambda batch: _forward(model, prepared[len(batch)]))


def backbone_forward(texts):
    model, tokenizer = _classifier(SHORT)
    return _pretokenized(tokenizer, model.config.suffix_token_ids, texts)(model.model)


def backbone_forward_compiled(texts):
    """The raw backbone through `torch.compile(dynamic=True)` on the very batches the eager one runs."""
    model, tokenizer = _classifier(SHORT)
    return _pretokenized(tokenizer, model.config.suffix_token_ids, texts)(torch.compile(model.model, dynamic=True))


def stock_forward(texts):
    from hf_clf_ext.bundled import smollm2_model_dir

    classifier, tokenizer = _classifier(SHORT)
    suffix = classifier.config.suffix_token_ids
    _, names = _test_texts(0)
    model = stock_classifier(smollm2_model_dir(), names, tokenizer, lora=False, dtype=DTYPE)
    return _pretokenized(tokenizer, suffix, texts)(model.to(_device()).eval())


@functools.cache
def _instruction_classifier():
    """The instruction approach with the embedded default's prompt and length, the run's dtype; one per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer
    from hf_clf_ext.bundled import smollm2_model_dir
    from hf_clf_ext.instruction.config import InstructionConfig
    from hf_clf_ext.jobs import parse_config

    _, args = parse_config(InstructionConfig, ["--config", str(INSTRUCTION_CONFIG), "--output_dir", "unused"])
    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPE).to(_device())
    _, names = _test_texts(0)
    return InstructionClassifier(model, tokenizer, InstructionPrompt(), Verbalizer(names), args.max_length)


def _instruction(method: str):
    def subject(_texts):
        classifier = _instruction_classifier()
        return lambda batch: len(classifier.classify(batch, method=method, batch_size=BATCH))
    return subject


def input_tokens(name: str, texts: list[str]) -> float:
    """Tokens the model encodes per article for an inference subject: the classifier's input with its suffix, or
    the instruction prompt (texts cut to the same length in both; the prompt adds its instructions), whose opening
    shared by all prompts is encoded once per pass and counts here as its share per article."""
    if name.startswith("instruction_"):
        from hf_clf_ext.instruction.prompt_cache import SharedPrefix

        classifier = _instruction_classifier()
        prompts = classifier.prompt_ids(texts)
        shared = len(SharedPrefix.encode(classifier.model, prompts).ids)
        return statistics.mean(len(ids) for ids in prompts) - shared + shared / len(prompts)
    model, tokenizer = _classifier(LONG if name.endswith("_long") else SHORT)
    suffix = len(model.config.suffix_token_ids)
    return statistics.mean(len(ids) + suffix for ids in tokenizer(texts, truncation=True)["input_ids"])


def _projections(config) -> list[tuple[str, int, int, int]]:
    """A decoder layer's projections: (names, in features, out features, how many per layer)."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    d, inner = config.hidden_size, config.intermediate_size
    return [("q_proj, o_proj", d, heads * head_dim, 2), ("k_proj, v_proj", d, kv_heads * head_dim, 2),
            ("gate_proj, up_proj", d, inner, 2), ("down_proj", inner, d, 1)]


def forward_flops(config, lengths, attention: bool = True) -> float:
    """FLOPs of the backbone's forward over sequences of these lengths, each at its own length (no padding): every
    layer's projections (2 x tokens x weights) and attention's two products over the whole length (what SDPA
    computes under a padding mask). The classification head is a rounding error."""
    projections = _projections(config)
    weights = sum(k * n * count for _, k, n, count in projections)
    width = projections[0][2]  # heads x head_dim: the width of attention's products
    return sum(2 * config.num_hidden_layers * (weights * length + attention * 2 * length * length * width)
               for length in lengths)


def matmul_ceiling(config, tokens: int, seconds: float = 2.0) -> dict:
    """GFLOP/s of the model's own matrix products (`F.linear` on `tokens` rows, each projection's weight shape, the
    run's dtype), and their rate combined as in one layer (total FLOPs over total time)."""
    rates, flops, total = {}, 0.0, 0.0
    with torch.no_grad():
        for name, k, n, count in _projections(config):
            x = torch.randn(tokens, k, dtype=DTYPE, device=_device())
            w = torch.randn(n, k, dtype=DTYPE, device=_device())
            F.linear(x, w)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                F.linear(x, w)
                runs += 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            each = (time.perf_counter() - started) / runs
            rates[name] = 2 * tokens * k * n / each / 1e9
            flops += count * 2 * tokens * k * n
            total += count * each
    return {"tokens": tokens, "by_shape_gflops": rates, "gflops": flops / total / 1e9}


def counted_flops(model, batch: dict) -> float:
    """FLOPs of one forward as torch.utils.flop_counter counts them: a check on `forward_flops`."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**batch)
    return counter.get_total_flops()


def profile(function, top: int = 12) -> list[dict]:
    """The ops `function` spends its time in (self CPU time), the top ones first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return top_ops(profiler, top)


def top_ops(profiler, top: int = 12) -> list[dict]:
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return [{"op": event.key, "self_seconds": event.self_cpu_time_total / 1e6,
             "share": event.self_cpu_time_total / total, "calls": event.count} for event in ranked]


def vllm_offline(texts: list[str], repeats: int, vllm_python: str) -> dict:
    """The same classifier exported to the stock architecture and classified offline by vLLM (`LLM.classify`) on
    the token ids `classify_texts` pools, in vLLM's virtualenv: the median of `repeats` passes after a warm-up."""
    from hf_clf_ext.export import export_stock

    model, tokenizer = _classifier(SHORT)
    work = Path(tempfile.mkdtemp())
    model.save_pretrained(work / "ours")
    tokenizer.save_pretrained(work / "ours")
    export_stock(str(work / "ours"), str(work / "stock"))
    suffix = model.config.suffix_token_ids
    ids = [row + suffix for row in tokenizer(texts, truncation=True)["input_ids"]]
    (work / "reference.json").write_text(json.dumps({
        "stock_dir": str(work / "stock"), "ids": ids, "max_tokens": max(map(len, ids)), "serve": False,
        "repeats": repeats, "dtype": _dtype_name(),
    }))
    # vLLM's CPU engine drops to one thread less than it is given unless OMP_NUM_THREADS is set: give it ours.
    threads = str(torch.get_num_threads())
    subprocess.run([vllm_python, str(Path(__file__).with_name("serve_vllm.py")), "--vllm-worker", str(work)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": threads})
    engine = json.loads((work / "vllm.json").read_text())
    speeds = [len(texts) / seconds for seconds in engine["offline_passes"]]
    return {**_summary(len(texts), speeds, None, None), "engine": f"vLLM {engine['vllm_version']}, {threads} threads",
            "input_tokens": statistics.mean(map(len, ids))}


# --- training subjects -----------------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """Wall time from the first step's start to the last step's end (model loading and setup excluded), and when
    each step ended."""

    started = ended = None

    def __init__(self, profile_steps: int = 0):
        self.step_ends = []
        self.profile_steps, self.profiler, self.profile = profile_steps, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.started = time.perf_counter()
        if self.profile_steps and state.global_step == COMPILE_STEPS:  # after the steps that may compile
            from torch.profiler import ProfilerActivity, profile as torch_profile

            self.profiler = torch_profile(activities=[ProfilerActivity.CPU])
            self.profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()
        self.step_ends.append(self.ended)
        if self.profiler is not None and state.global_step == COMPILE_STEPS + self.profile_steps:
            self.profiler.__exit__(None, None, None)
            self.profile = top_ops(self.profiler)

    def steady(self, batch: int) -> dict:
        """Examples per second after the first COMPILE_STEPS steps (where a compiled run compiles), and their time."""
        first = self.step_ends[COMPILE_STEPS - 1]
        return {STEADY: (len(self.step_ends) - COMPILE_STEPS) * batch / (self.ended - first),
                "first_steps_seconds": first - self.started}


def _train(ours: bool, grouped: bool, max_length: int, compile: bool = False):
    def subject(_texts, profile_steps: int = 0):
        from hf_clf_ext.bundled import bbc_news_splits

        train = bbc_news_splits(train_per_class=TRAIN_PER_CLASS, validation_per_class=20)["train"]
        workdir = tempfile.mkdtemp()
        clock = StepClock(profile_steps)
        sampling = "group_by_length" if grouped else "random"
        steps = COMPILE_STEPS + profile_steps if profile_steps else TRAIN_STEPS
        trainer = (_our_trainer if ours else _stock_trainer)(train, workdir, max_length, sampling, clock, compile,
                                                             steps)

        def run(_batch):
            trainer.train()
            return trainer.state.global_step * trainer.args.per_device_train_batch_size

        return run, clock
    return subject


def _our_trainer(train, workdir, max_length, sampling, clock, compile, steps):
    from hf_clf_ext import LastTokenTrainer
    from hf_clf_ext.jobs import parse_config, resolve_model
    from hf_clf_ext.last_token.config import LastTokenConfig

    script, args = parse_config(LastTokenConfig, [
        "--config", str(LAST_TOKEN_CONFIG), "--output_dir", workdir, "--max_steps", str(steps), "--max_length",
        str(max_length), "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--calibrate", "false", "--train_sampling_strategy", sampling, "--disable_tqdm", "true",
        "--use_cpu", str(not torch.cuda.is_available()).lower(), "--torch_compile", str(compile).lower(),
    ])
    return LastTokenTrainer(resolve_model(script)[0], args=args, train_dataset=train, callbacks=[clock])


def _stock_trainer(train, workdir, max_length, sampling, clock, compile, steps):
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from hf_clf_ext.bundled import smollm2_model_dir

    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = stock_classifier(path, train.features["label"].names, tokenizer)
    args = stock_training_arguments(workdir, 0, max_steps=steps, eval_strategy="no", save_strategy="no",
                                    load_best_model_at_end=False, train_sampling_strategy=sampling,
                                    torch_compile=compile)
    return Trainer(model=model, args=args, train_dataset=stock_encode(train, tokenizer, max_length),
                   data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, callbacks=[clock])


SUBJECTS = {
    "head_predict": _predict(SHORT, sort=True),
    "head_predict_unsorted": _predict(SHORT, sort=False),
    "head_predict_long": _predict(LONG, sort=True),
    "head_predict_unsorted_long": _predict(LONG, sort=False),
    "head_predict_compiled": _predict(SHORT, sort=True, compile=True),
    "backbone_forward": backbone_forward,
    "backbone_forward_compiled": backbone_forward_compiled,
    "stock_forward": stock_forward,
    "instruction_generate": _instruction("generate"),
    "instruction_score": _instruction("score"),
    **{
        f"train_{who}{'_grouped' if grouped else ''}{'_long' if length == LONG else ''}":
            _train(who == "ours", grouped, length)
        for who in ("ours", "stock") for grouped in (False, True) for length in (SHORT, LONG)
    },
    "train_ours_compiled": _train(True, False, SHORT, compile=True),
    "train_stock_compiled": _train(False, False, SHORT, compile=True),
}


def run_subjects(names: list[str], examples: int, repeats: int, vllm_python: str | None = None,
                 profile_training: bool = False) -> dict:
    """Results by subject name, for subjects that share this process."""
    texts, _ = _test_texts(examples)
    if profile_training:  # a short run of its own whose two steady steps are profiled, not timed
        (name,) = names
        run, clock = SUBJECTS[name](texts, profile_steps=2)
        run(None)
        return {name: {"profile": clock.profile}}
    if names == ["vllm_offline"]:
        return {"vllm_offline": vllm_offline(texts, repeats, vllm_python)}
    if names[0].startswith("train_"):  # once: a training run is long enough to average itself
        (name,) = names
        run, clock = SUBJECTS[name](texts)
        with PeakMemory() as memory:
            count = run(None)
        steady = clock.steady(count // len(clock.step_ends))
        return {name: {**_summary(count, [count / (clock.ended - clock.started)], memory.gib, memory.extra_gib),
                       **steady, "steady_passes": [steady[STEADY]]}}
    built = {name: SUBJECTS[name](texts) for name in names}
    # A pass at 1024 tokens takes minutes, long enough to average itself.
    repeats = 1 if all(name.endswith("_long") for name in names) else repeats
    results = interleaved({name: functools.partial(subject, texts) for name, subject in built.items()},
                          {name: functools.partial(subject, texts[:BATCH]) for name, subject in built.items()},
                          repeats)
    results = {name: {**row, "input_tokens": input_tokens(name, texts)} for name, row in results.items()}
    if any(name in FLOP_SUBJECTS for name in names):
        _add_flop_rates(results, texts)
    for name in PROFILED:  # two batches each, after the timed passes (compiled graphs are warm)
        if name in built:
            results[name]["profile"] = profile(functools.partial(built[name], texts[: 2 * BATCH]))
    return results


FLOP_SUBJECTS = ["head_predict", "head_predict_compiled", "backbone_forward", "backbone_forward_compiled",
                 "stock_forward", "head_predict_unsorted"]


def _add_flop_rates(results: dict, texts: list[str]) -> None:
    """Achieved GFLOP/s of the 256-token subjects, the model-shaped matmul ceiling measured now, and a count of one
    batch's FLOPs by torch's flop counter against the formula."""
    model, tokenizer = _classifier(SHORT)
    config = model.config.text_config
    suffix = model.config.suffix_token_ids
    lengths = [len(ids) + len(suffix) for ids in tokenizer(texts, truncation=True)["input_ids"]]
    per_example = forward_flops(config, lengths) / len(texts)
    ceiling = matmul_ceiling(config, BATCH * SHORT)
    (batch,) = _backbone_batches(tokenizer, suffix, texts[:BATCH], _device())
    width = batch["input_ids"].shape[1]
    check = {"counted": counted_flops(model.model, batch), "formula": forward_flops(config, [width] * BATCH),
             "formula_projections": forward_flops(config, [width] * BATCH, attention=False)}
    for name in FLOP_SUBJECTS:
        if name in results:
            achieved = per_example * results[name]["examples_per_second"] / 1e9
            results[name].update(gflop_per_example=per_example / 1e9, achieved_gflops=achieved,
                                 ceiling=ceiling, ceiling_share=achieved / ceiling["gflops"], flop_check=check)


# --- the run ---------------------------------------------------------------------------------------------------------


def _processes(subjects: list[str], train_repeats: int) -> list[list[str]]:
    """The asked-for subjects, grouped by the process they run in. Training subjects at 256 tokens run
    `train_repeats` times, round-robin, so that drifts in the machine's speed reach all of them; at 1024 tokens once
    (a run takes about ten minutes on 2 CPU cores)."""
    groups = [[name for name in group if name in subjects] for group in INTERLEAVED]
    serving = [[name] for name in SERVING if name in subjects]
    training = [name for name in subjects if name in TRAINING]
    rounds = [[name] for round_ in range(train_repeats) for name in training
              if round_ == 0 or not name.endswith("_long")]
    return [group for group in groups if group] + serving + rounds


def run(subjects: list[str], examples: int, repeats: int, train_repeats: int, vllm_python: str | None) -> dict:
    results = {}
    for names in _processes(subjects, train_repeats):
        print(f"== {' '.join(names)}", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--subject", *names, "--examples", str(examples), "--repeats",
                       str(repeats), "--dtype", _dtype_name(), "--out", out.name]
            subprocess.run(command + (["--vllm_python", vllm_python] if vllm_python else []), check=True)
            measured = json.loads(Path(out.name).read_text())
        for name in names:
            row = measured[name]
            if name in results:  # another run of a training subject: the median run, the highest peak
                before = results[name]
                steady = before["steady_passes"] + row["steady_passes"]
                row = {**row, **_summary(row["examples"], before["passes"] + row["passes"],
                                         max(before["peak_memory_gib"], row["peak_memory_gib"]),
                                         max(before["extra_memory_gib"], row["extra_memory_gib"])),
                       "steady_passes": steady, STEADY: statistics.median(steady),
                       "first_steps_seconds": max(before["first_steps_seconds"], row["first_steps_seconds"])}
            results[name] = row
            print(name, json.dumps({key: value for key, value in row.items() if key != "profile"}), flush=True)
    return results


def _ratio_rows(saved: dict) -> list[str]:
    results = saved["results"]
    lines = ["| ratio | value | target | met |", "|---|---|---|---|"]
    for label, top, bottom, sense, target, *key in RATIOS:
        if top not in results or bottom not in results:
            continue
        key = key[0] if key else "examples_per_second"
        wanted = "-" if sense is None else f"{sense} {target}"
        if results[top]["run"] != results[bottom]["run"] or key not in results[top] or key not in results[bottom]:
            lines.append(f"| {label} | - (measured in different runs) | {wanted} | - |")
            continue
        # Speed of `top` over speed of `bottom`; with the head on top and an instruction method below, this is the
        # method's cost per example in head costs.
        value = results[top][key] / results[bottom][key]
        met = "-" if sense is None else ("yes" if (value >= target if sense == ">=" else value <= target) else "no")
        lines.append(f"| {label} | {value:.3f} | {wanted} | {met} |")
    return lines


def _flop_rows(results: dict) -> list[str]:
    rows = [name for name in FLOP_SUBJECTS if "achieved_gflops" in results.get(name, {})]
    if not rows:
        return []
    first = results[rows[0]]
    ceiling, check = first["ceiling"], first["flop_check"]
    shapes = ", ".join(f"{name} {rate:.0f}" for name, rate in ceiling["by_shape_gflops"].items())
    lines = ["", "## FLOP rate against the model-shaped matmul ceiling", "",
             f"Ceiling: the model's own products (`F.linear`, {ceiling['tokens']} tokens x each projection's weight "
             f"shape), measured in the same process: {shapes} GFLOP/s; combined as in one layer "
             f"**{ceiling['gflops']:.0f} GFLOP/s**. FLOPs per article: each article's forward at its own length "
             f"(projections and attention's two products), {first['gflop_per_example']:.1f} GFLOP on average; "
             f"torch's flop counter on the first batch counts {check['counted'] / 1e9:.1f} GFLOP where the formula "
             f"gives {check['formula'] / 1e9:.1f}, {check['formula_projections'] / 1e9:.1f} of it in the projections "
             "(the counter has no entry for the CPU's fused attention kernel).", "",
             "| subject | GFLOP/s achieved | share of the ceiling | target | met |", "|---|---|---|---|---|"]
    for name in rows:
        share = results[name]["ceiling_share"]
        target = name.startswith("head_predict") and name != "head_predict_unsorted"
        met = ("yes" if share >= CEILING_TARGET else "no") if target else "-"
        lines.append(f"| {name} | {results[name]['achieved_gflops']:.1f} | {share:.0%} | "
                     f"{f'>= {CEILING_TARGET:.0%}' if target else '-'} | {met} |")
    return lines


def _profile_rows(results: dict) -> list[str]:
    lines = []
    for name in PROFILED + PROFILED_TRAINING:
        if "profile" not in results.get(name, {}):
            continue
        what = "two batches" if name in PROFILED else (
            f"training steps {COMPILE_STEPS + 1}-{COMPILE_STEPS + 2} of a short run of its own")
        lines += ["", f"### Where `{name}` spends its time (torch.profiler, self CPU time over {what})", "",
                  "| op | self seconds | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{row['op']}` | {row['self_seconds']:.2f} | {row['share']:.1%} | {row['calls']} |"
                  for row in results[name]["profile"]]
    return lines


def report(saved: dict) -> str:
    """speed.md from speed.json: the ratios against their targets, then every subject's measurements."""
    results = saved["results"]
    runs = "; ".join(
        f"run {i}: {run['date']} on {run['machine']}, {run['dtype']} weights, {run['examples']} test articles, "
        f"{run['repeats']} inference passes and {run['train_repeats']} training runs a subject: "
        f"{', '.join(run['subjects'])}" for i, run in enumerate(saved["runs"]))
    groups = "; ".join(", ".join(group) for group in INTERLEAVED)
    lines = ["# Speed and peak memory (SmolLM2-135M-Instruct, BBC News)", "",
             f"Runs of `benchmarks/speed.py` (a later run replaces the subjects it measures; a ratio compares two "
             f"subjects of one run): {runs}.", "",
             (f"Inference on the run's test articles, batch {BATCH}, after one warm-up batch (where compiled subjects "
              f"compile); subjects compared with each other share one process and take turns pass by pass ({groups}); "
              "speeds at 256 tokens are the median of the run's passes (range in brackets), at 1024 tokens one pass; "
              "vllm_offline runs in its own process (vLLM's virtualenv) on the same token ids. Training: each run in "
              "a fresh process, the median of the run's training runs at 256 tokens taken round-robin (range in "
              f"brackets), one run at 1024 tokens; {TRAIN_STEPS} steps of batch 8 drawn from {5 * TRAIN_PER_CLASS} "
              "training articles (one length-grouping mega-batch), LoRA r=8, AdamW, bf16 autocast where the weights "
              f"are bf16, the first step included; \"steady\" leaves out the first {COMPILE_STEPS} steps, where a "
              "compiled run compiles. Peak memory is the process's peak resident set during the subject's passes "
              "(CUDA: peak allocated), the weights of every model in the process included; extra is the rise above "
              "what was resident when the pass began."), ""]
    lines += _ratio_rows(saved)
    lines += _flop_rows(results)
    lines += ["", "![examples per second and peak memory by subject](speed.png)", "",
              "| subject | run | examples/s | seconds per pass | examples | tokens encoded per example | peak memory "
              "(GiB) | extra (GiB) | warm-up or first steps (s) | steady examples/s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        spread = f" [{min(row['passes']):.2f}–{max(row['passes']):.2f}]" if len(row["passes"]) > 1 else ""
        tokens = f"{row['input_tokens']:.0f}" if "input_tokens" in row else "-"
        memory = ("-", "-") if row["peak_memory_gib"] is None else (f"{row['peak_memory_gib']:.2f}",
                                                                     f"{row['extra_memory_gib']:.2f}")
        first = row.get("warmup_seconds", row.get("first_steps_seconds"))
        lines.append(f"| {name} | {row['run']} | {row['examples_per_second']:.2f}{spread} | "
                     f"{row['seconds']:.1f} | {row['examples']} | {tokens} | {memory[0]} | {memory[1]} | "
                     f"{'-' if first is None else f'{first:.1f}'} | "
                     f"{f'{row[STEADY]:.2f}' if STEADY in row else '-'} |")
    lines += _profile_rows(results)
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, machine_name: str) -> None:
    """Examples per second and peak memory of every subject, inference and training side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [[name for name in names if name in results] for names in (INFERENCE + SERVING, TRAINING)]
    kinds = [names for names in kinds if names]
    figure, axes = plt.subplots(len(kinds), 2, figsize=(11, 1.2 + 0.4 * sum(map(len, kinds))), squeeze=False,
                                gridspec_kw={"height_ratios": [len(names) for names in kinds]})
    for row, names in zip(axes, kinds):
        for axis, key, label in zip(row, ("examples_per_second", "peak_memory_gib"), ("examples/s", "peak GiB")):
            axis.barh(names, [results[name][key] or 0 for name in names])
            axis.invert_yaxis()
            axis.set_xlabel(label)
    for axis in axes[:, 1]:
        axis.set_yticklabels([])
    figure.suptitle(f"SmolLM2-135M-Instruct on BBC News; {machine_name}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _dtype_name() -> str:
    return str(DTYPE).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    """bf16 where the hardware computes in it natively (CUDA, AVX-512 / AMX CPUs), float32 elsewhere: bf16 products
    on an AVX2-only CPU are emulated, about 75x slower than float32."""
    if name == "auto":
        native = torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, name)


def main(argv=None) -> None:
    global DTYPE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    everything = [name for name in SUBJECT_NAMES if name not in SERVING]
    parser.add_argument("--subjects", nargs="+", choices=SUBJECT_NAMES, default=everything,
                        help="Subjects to measure (default: all but vllm_offline, which needs --vllm_python).")
    parser.add_argument("--examples", type=int, default=445, help="Test articles for the inference subjects.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per inference subject (median kept).")
    parser.add_argument("--train_repeats", type=int, default=3,
                        help="Runs of each training subject at 256 tokens, each in a fresh process (median kept).")
    parser.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default="auto",
                        help="Weights (and training autocast): auto = bf16 where native, else float32.")
    parser.add_argument("--vllm_python", help="The python of vLLM's virtualenv (for vllm_offline).")
    parser.add_argument("--profile_training", action="store_true",
                        help="Profile two steady training steps of " + ", ".join(PROFILED_TRAINING) + " (each in a "
                             "short process of its own) and add the tables to the saved results; nothing is timed.")
    parser.add_argument("--merge", action="store_true",
                        help="Keep the saved results of the subjects not run now (to re-measure a few).")
    parser.add_argument("--subject", nargs="+", choices=SUBJECT_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS, help="Folder for speed.json and speed.md.")
    parser.add_argument("--report", action="store_true", help="Only write speed.md and speed.png from speed.json.")
    args = parser.parse_args(argv)
    DTYPE = _dtype(args.dtype)
    if "vllm_offline" in (args.subject or args.subjects) and not args.vllm_python:
        parser.error("vllm_offline needs --vllm_python (see the README's vLLM section for its virtualenv)")
    if args.subject:
        measured = run_subjects(args.subject, args.examples, args.repeats, args.vllm_python, args.profile_training)
        Path(args.out).write_text(json.dumps(measured))
        return
    saved_path = args.results / "speed.json"
    if args.profile_training:
        saved = json.loads(saved_path.read_text())
        for name in PROFILED_TRAINING:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([sys.executable, __file__, "--subject", name, "--profile_training", "--dtype",
                                _dtype_name(), "--out", out.name], check=True)
                saved["results"][name]["profile"] = json.loads(Path(out.name).read_text())[name]["profile"]
        saved_path.write_text(json.dumps(saved, indent=2))
    elif args.report:
        saved = json.loads(saved_path.read_text())
    else:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results = run(args.subjects, args.examples, args.repeats, args.train_repeats, args.vllm_python)
        run_facts = [{"date": started, "machine": machine(), "dtype": _dtype_name(), "examples": args.examples,
                      "repeats": args.repeats, "train_repeats": args.train_repeats,
                      "subjects": ["all"] if set(args.subjects) == set(everything) else args.subjects}]
        if args.merge and saved_path.exists():
            kept = json.loads(saved_path.read_text())
            run_facts = kept["runs"] + run_facts
            results = {name: results.get(name, kept["results"].get(name)) for name in SUBJECT_NAMES
                       if name in results or name in kept["results"]}
        for name in args.subjects:
            results[name]["run"] = len(run_facts) - 1
        saved = {"runs": run_facts, "results": results}
        args.results.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(json.dumps(saved, indent=2))
    text = report(saved)
    (args.results / "speed.md").write_text(text)
    plot(saved["results"], args.results / "speed.png", saved["runs"][-1]["machine"])
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
