"""Speed and peak memory, in one run on one machine, as ratios (SmolLM2-135M-Instruct, BBC News test articles).

    python benchmarks/speed.py                                   # everything (about 2 hours on 2 CPU cores, 21 GiB)
    python benchmarks/speed.py --examples 64 --subjects head_predict backbone_forward   # a quick look
    python benchmarks/speed.py --subjects train_ours train_stock --merge    # re-measure two, keep the other results

Inference subjects that are compared with each other run in one process, in alternating passes (the order rotates
each round), after one warm-up batch each: on a shared VM the speed of one process differs from the next by 10-20%,
more than the ratios resolve. An inference speed is the median of `--repeats` passes. Each training run is a fresh
process; at 256 tokens the subjects run `--train_repeats` times, round-robin, and the median run is kept. Peak memory
is the process's peak resident memory during the subject's passes (peak allocated GPU memory on CUDA), the weights of
every model in the process included; "extra" is that peak minus what was resident when the pass began: the subject's
own working memory.
"""

import argparse
import ctypes
import functools
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
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

INFERENCE = ["head_predict", "backbone_forward", "stock_forward", "head_predict_unsorted", "instruction_generate",
             "instruction_score", "head_predict_long", "head_predict_unsorted_long"]
TRAINING = ["train_ours", "train_stock", "train_ours_grouped", "train_stock_grouped", "train_ours_long",
            "train_stock_long", "train_ours_grouped_long", "train_stock_grouped_long"]
# Inference subjects measured together, in alternating passes within one process (the ratios below compare them).
INTERLEAVED = [INFERENCE[:6], INFERENCE[6:]]

# (name, numerator, denominator, how the ratio is read, target): ratio = speed(numerator) / speed(denominator).
RATIOS = [
    ("predict / raw backbone forward", "head_predict", "backbone_forward", ">=", 0.97),
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
]


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
    for warmup in warmups.values():
        warmup()
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
    return {name: _summary(count, speeds[name], *memory[name]) for name in names}


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
    """Our classifier as users deploy it (merged weights, bf16), with the embedded default's pooling suffix; one per
    process, shared by the subjects that run in it."""
    from transformers import AutoTokenizer

    from hf_clf_ext import LastTokenClassifierForSequenceClassification
    from hf_clf_ext.bundled import smollm2_model_dir

    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, names = _test_texts(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(path, labels=names, tokenizer=tokenizer,
                                                                       dtype=torch.bfloat16).to(_device())
    model.config.suffix_token_ids = tokenizer("\nTopic:", add_special_tokens=False)["input_ids"]
    tokenizer.model_max_length = max_length - len(model.config.suffix_token_ids)
    return model.eval(), tokenizer


def _predict(max_length: int, sort: bool):
    from hf_clf_ext import predict_texts

    def subject(texts):
        model, tokenizer = _classifier(max_length)
        if sort:
            return lambda batch: len(predict_texts(model, tokenizer, batch, batch_size=BATCH))
        return lambda batch: sum(len(predict_texts(model, tokenizer, batch[i : i + BATCH], batch_size=BATCH))
                                 for i in range(0, len(batch), BATCH))
    return subject


def _backbone_batches(tokenizer, suffix: list[int], texts: list[str], device) -> list[dict]:
    """The batches `predict_texts` gives the backbone: longest first, suffix after the real tokens, right padded."""
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


def stock_forward(texts):
    from hf_clf_ext.bundled import smollm2_model_dir

    classifier, tokenizer = _classifier(SHORT)
    suffix = classifier.config.suffix_token_ids
    _, names = _test_texts(0)
    model = stock_classifier(smollm2_model_dir(), names, tokenizer, lora=False, dtype=torch.bfloat16)
    return _pretokenized(tokenizer, suffix, texts)(model.to(_device()).eval())


@functools.cache
def _instruction_classifier():
    """The instruction approach with the embedded default's prompt and length, bf16; one per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer
    from hf_clf_ext.bundled import smollm2_model_dir
    from hf_clf_ext.instruction_config import InstructionSFTConfig
    from hf_clf_ext.jobs import parse_config

    _, args = parse_config(InstructionSFTConfig, ["--config", str(INSTRUCTION_CONFIG), "--output_dir", "unused"])
    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(_device())
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
        from hf_clf_ext.prompt_cache import SharedPrefix

        classifier = _instruction_classifier()
        prompts = classifier.prompt_ids(texts)
        shared = len(SharedPrefix.encode(classifier.model, prompts).ids)
        return statistics.mean(len(ids) for ids in prompts) - shared + shared / len(prompts)
    model, tokenizer = _classifier(LONG if name.endswith("_long") else SHORT)
    suffix = len(model.config.suffix_token_ids)
    return statistics.mean(len(ids) + suffix for ids in tokenizer(texts, truncation=True)["input_ids"])


# --- training subjects -----------------------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """Wall time from the first step's start to the last step's end (model loading and setup excluded)."""

    started = ended = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ended = time.perf_counter()


def _train(ours: bool, grouped: bool, max_length: int):
    def subject(_texts):
        from hf_clf_ext.bundled import bbc_news_splits

        train = bbc_news_splits(train_per_class=TRAIN_PER_CLASS, validation_per_class=20)["train"]
        workdir = tempfile.mkdtemp()
        clock = StepClock()
        sampling = "group_by_length" if grouped else "random"
        trainer = (_our_trainer if ours else _stock_trainer)(train, workdir, max_length, sampling, clock)

        def run(_batch):
            trainer.train()
            return trainer.state.global_step * trainer.args.per_device_train_batch_size

        return run, clock
    return subject


def _our_trainer(train, workdir, max_length, sampling, clock):
    from hf_clf_ext import LastTokenClassifierTrainer
    from hf_clf_ext.jobs import parse_config, resolve_model
    from hf_clf_ext.last_token_config import LastTokenClassifierTrainingArguments

    script, args = parse_config(LastTokenClassifierTrainingArguments, [
        "--config", str(LAST_TOKEN_CONFIG), "--output_dir", workdir, "--max_steps", str(TRAIN_STEPS), "--max_length",
        str(max_length), "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
        "--calibrate", "false", "--train_sampling_strategy", sampling, "--disable_tqdm", "true",
        "--use_cpu", str(not torch.cuda.is_available()).lower(),
    ])
    return LastTokenClassifierTrainer(resolve_model(script)[0], args=args, train_dataset=train, callbacks=[clock])


def _stock_trainer(train, workdir, max_length, sampling, clock):
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from hf_clf_ext.bundled import smollm2_model_dir

    path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = stock_classifier(path, train.features["label"].names, tokenizer)
    args = stock_training_arguments(workdir, 0, max_steps=TRAIN_STEPS, eval_strategy="no", save_strategy="no",
                                    load_best_model_at_end=False, train_sampling_strategy=sampling)
    return Trainer(model=model, args=args, train_dataset=stock_encode(train, tokenizer, max_length),
                   data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer, callbacks=[clock])


SUBJECTS = {
    "head_predict": _predict(SHORT, sort=True),
    "head_predict_unsorted": _predict(SHORT, sort=False),
    "head_predict_long": _predict(LONG, sort=True),
    "head_predict_unsorted_long": _predict(LONG, sort=False),
    "backbone_forward": backbone_forward,
    "stock_forward": stock_forward,
    "instruction_generate": _instruction("generate"),
    "instruction_score": _instruction("score"),
    **{
        f"train_{who}{'_grouped' if grouped else ''}{'_long' if length == LONG else ''}":
            _train(who == "ours", grouped, length)
        for who in ("ours", "stock") for grouped in (False, True) for length in (SHORT, LONG)
    },
}


def run_subjects(names: list[str], examples: int, repeats: int) -> dict:
    """Results by subject name, for subjects that share this process."""
    texts, _ = _test_texts(examples)
    if names[0].startswith("train_"):  # once: a training run is long enough to average itself
        (name,) = names
        run, clock = SUBJECTS[name](texts)
        with PeakMemory() as memory:
            count = run(None)
        return {name: _summary(count, [count / (clock.ended - clock.started)], memory.gib, memory.extra_gib)}
    built = {name: SUBJECTS[name](texts) for name in names}
    # A pass at 1024 tokens takes minutes, long enough to average itself.
    repeats = 1 if all(name.endswith("_long") for name in names) else repeats
    results = interleaved({name: functools.partial(subject, texts) for name, subject in built.items()},
                          {name: functools.partial(subject, texts[:BATCH]) for name, subject in built.items()}, repeats)
    return {name: {**row, "input_tokens": input_tokens(name, texts)} for name, row in results.items()}


# --- the run ---------------------------------------------------------------------------------------------------------


def _processes(subjects: list[str], train_repeats: int) -> list[list[str]]:
    """The asked-for subjects, grouped by the process they run in. Training subjects at 256 tokens run
    `train_repeats` times, round-robin, so that drifts in the machine's speed reach all of them; at 1024 tokens once
    (a run takes about ten minutes on 2 CPU cores)."""
    groups = [[name for name in group if name in subjects] for group in INTERLEAVED]
    training = [name for name in subjects if name in TRAINING]
    rounds = [[name] for round_ in range(train_repeats) for name in training if round_ == 0 or not name.endswith("_long")]
    return [group for group in groups if group] + rounds


def run(subjects: list[str], examples: int, repeats: int, train_repeats: int) -> dict:
    results = {}
    for names in _processes(subjects, train_repeats):
        print(f"== {' '.join(names)}", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, __file__, "--subject", *names, "--examples", str(examples), "--repeats",
                            str(repeats), "--out", out.name], check=True)
            measured = json.loads(Path(out.name).read_text())
        for name in names:
            row = measured[name]
            if name in results:  # another run of a training subject: the median run, the highest peak
                before = results[name]
                row = _summary(row["examples"], before["passes"] + row["passes"],
                               max(before["peak_memory_gib"], row["peak_memory_gib"]),
                               max(before["extra_memory_gib"], row["extra_memory_gib"]))
            results[name] = row
            print(name, json.dumps(measured[name]), flush=True)
    return results


def report(saved: dict) -> str:
    """speed.md from speed.json: the ratios against their targets, then every subject's measurements."""
    results, examples, repeats, train_repeats = (saved[key] for key in ("results", "examples", "repeats",
                                                                         "train_repeats"))
    runs = "; ".join(f"{run['date']} on {run['machine']}: {', '.join(run['subjects'])}" for run in saved["runs"])
    groups = "; ".join(", ".join(group) for group in INTERLEAVED)
    lines = ["# Speed and peak memory (SmolLM2-135M-Instruct, BBC News)", "",
             f"Runs of `benchmarks/speed.py` (a later run replaces the subjects it measures): {runs}.", "",
             (f"Inference on {examples} test articles, batch "
             f"{BATCH}, bf16 weights, after one warm-up batch; subjects compared with each other share one process "
             f"and take turns pass by pass ({groups}); speeds at 256 tokens are the median of {repeats} passes (range "
             "in brackets), at 1024 tokens one pass. Training: each run in a fresh process, the median of "
             f"{train_repeats} runs at 256 tokens taken round-robin (range in brackets), one run at 1024 tokens; "
             f"{TRAIN_STEPS} steps of batch 8 drawn from {5 * TRAIN_PER_CLASS} training articles (one length-grouping "
             "mega-batch), LoRA r=8, AdamW, bf16 autocast, the first step included. Peak memory is the process's peak "
             "resident set during the subject's passes (CUDA: peak allocated), the weights of every model in the "
             "process included; extra is the rise above what was resident when the pass began."), "",
             "| ratio | value | target | met |", "|---|---|---|---|"]
    for label, top, bottom, sense, target in RATIOS:
        if top not in results or bottom not in results:
            continue
        # Speed of `top` over speed of `bottom`; with the head on top and an instruction method below, this is the
        # method's cost per example in head costs.
        value = results[top]["examples_per_second"] / results[bottom]["examples_per_second"]
        met = "-" if sense is None else ("yes" if (value >= target if sense == ">=" else value <= target) else "no")
        lines.append(f"| {label} | {value:.3f} | {'-' if sense is None else f'{sense} {target}'} | {met} |")
    lines += ["", "![examples per second and peak memory by subject](speed.png)", "",
              "| subject | examples/s | seconds per pass | examples | tokens encoded per example | peak memory (GiB) "
              "| extra (GiB) |", "|---|---|---|---|---|---|---|"]
    for name, row in results.items():
        spread = f" [{min(row['passes']):.2f}–{max(row['passes']):.2f}]" if len(row["passes"]) > 1 else ""
        tokens = f"{row['input_tokens']:.0f}" if "input_tokens" in row else "-"
        lines.append(f"| {name} | {row['examples_per_second']:.2f}{spread} | {row['seconds']:.1f} | {row['examples']} "
                     f"| {tokens} | {row['peak_memory_gib']:.2f} | {row['extra_memory_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, machine_name: str) -> None:
    """Examples per second and peak memory of every subject, inference and training side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [[name for name in names if name in results] for names in (INFERENCE, TRAINING)]
    kinds = [names for names in kinds if names]
    figure, axes = plt.subplots(len(kinds), 2, figsize=(11, 1.2 + 0.4 * sum(map(len, kinds))), squeeze=False,
                                gridspec_kw={"height_ratios": [len(names) for names in kinds]})
    for row, names in zip(axes, kinds):
        for axis, key, label in zip(row, ("examples_per_second", "peak_memory_gib"), ("examples/s", "peak GiB")):
            axis.barh(names, [results[name][key] for name in names])
            axis.invert_yaxis()
            axis.set_xlabel(label)
    for axis in axes[:, 1]:
        axis.set_yticklabels([])
    figure.suptitle(f"SmolLM2-135M-Instruct on BBC News; {machine_name}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs="+", choices=INFERENCE + TRAINING, default=INFERENCE + TRAINING)
    parser.add_argument("--examples", type=int, default=445, help="Test articles for the inference subjects.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per inference subject (median kept).")
    parser.add_argument("--train_repeats", type=int, default=3,
                        help="Runs of each training subject at 256 tokens, each in a fresh process (median kept).")
    parser.add_argument("--merge", action="store_true",
                        help="Keep the saved results of the subjects not run now (to re-measure a few).")
    parser.add_argument("--subject", nargs="+", choices=INFERENCE + TRAINING, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=RESULTS, help="Folder for speed.json and speed.md.")
    parser.add_argument("--report", action="store_true", help="Only write speed.md and speed.png from speed.json.")
    args = parser.parse_args(argv)
    if args.subject:
        Path(args.out).write_text(json.dumps(run_subjects(args.subject, args.examples, args.repeats)))
        return
    saved_path = args.results / "speed.json"
    if args.report:
        saved = json.loads(saved_path.read_text())
    else:
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        results = run(args.subjects, args.examples, args.repeats, args.train_repeats)
        run_facts = [{"date": started, "machine": machine(),
                      "subjects": ["all"] if set(args.subjects) == set(INFERENCE + TRAINING) else args.subjects}]
        if args.merge and saved_path.exists():
            kept = json.loads(saved_path.read_text())
            results = {name: results.get(name, kept["results"].get(name)) for name in INFERENCE + TRAINING
                       if name in results or name in kept["results"]}
            run_facts = kept["runs"] + run_facts
        saved = {"examples": args.examples, "repeats": args.repeats, "train_repeats": args.train_repeats,
                 "runs": run_facts, "results": results}
        args.results.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(json.dumps(saved, indent=2))
    text = report(saved)
    (args.results / "speed.md").write_text(text)
    plot(saved["results"], args.results / "speed.png", saved["runs"][-1]["machine"])
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
