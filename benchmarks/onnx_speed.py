"""Serving on CPUs past float32 eager: onnxruntime float32 and int8 against the torch engine, in one run.

    python benchmarks/onnx_speed.py --model outputs/smollm2-135m-bbc-last-token

The main job's classifier is exported (`hf_clf_ext.export.export_onnx`, float32 and int8) and the 445 BBC test
articles (256 tokens, as trained) go through `TextClassifier.classify` on each engine, batch 16, the same number of
threads, in one process taking turns (the order rotates each pass; the median pass is kept). For each: texts/s, the
largest probability difference and the label agreement with eager float32, test macro-F1, the model file's size and
the resident memory its loading added. onnxruntime's profiler then shows where int8's time goes, by operator type.
The vLLM engine's figure comes from `benchmarks/scale.py --parts engines` (another process, its own virtualenv).
Writes benchmarks/results/onnx.md and onnx.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import machine  # noqa: E402


def folder_mib(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir() if path.suffix in (".onnx", ".data", ".safetensors")
               or path.name.endswith(".onnx.data")) / 2**20


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def op_profile(folder: Path, texts: list[str], threads: int, top: int = 10) -> list[dict]:
    """Where onnxruntime spends one pass over `texts`: milliseconds by operator type, largest first."""
    import onnxruntime

    from hf_clf_ext.engines.onnxruntime_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(str(folder), threads=threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    engine.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                  providers=["CPUExecutionProvider"])
    engine.probabilities(texts, 16)
    trace = json.loads(Path(engine.session.end_profiling()).read_text())
    spent = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            spent[event["args"].get("op_name", "?")] += event["dur"] / 1000
    total = sum(spent.values())
    return [{"op": op, "ms": round(ms, 1), "share": round(ms / total, 3)} for op, ms in spent.most_common(top)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A last-token classifier folder (the main job's).")
    parser.add_argument("--passes", type=int, default=1, help="Timed passes over the articles per engine.")
    parser.add_argument("--examples", type=int, default=None, help="The first N test articles (default: all 445).")
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from sklearn.metrics import f1_score

    from hf_clf_ext import TextClassifier
    from hf_clf_ext.bundled import bbc_news_splits
    from hf_clf_ext.export import export_onnx

    test = bbc_news_splits()["test"]
    texts = list(test["text"])[: args.examples]
    gold = [test.features["label"].names[i] for i in test["label"]][: len(texts)]
    threads = torch.get_num_threads()
    results = {"model": args.model, "machine": machine(), "articles": len(texts), "threads": threads,
               "batch_size": 16, "passes": args.passes, "engines": {}}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        classifiers, folders = {}, {"torch float32 (eager)": Path(args.model)}
        before = rss_mib()
        classifiers["torch float32 (eager)"] = TextClassifier.from_pretrained(args.model, dtype=torch.float32)
        results["engines"]["torch float32 (eager)"] = {"load_rss_mib": round(rss_mib() - before)}
        for quantize in (None, "int8"):
            name = f"onnxruntime {quantize or 'float32'}"
            folders[name] = work / (quantize or "float32")
            started = time.perf_counter()
            export_onnx(args.model, folders[name], quantize=quantize)
            export_seconds = time.perf_counter() - started
            before = rss_mib()
            classifiers[name] = TextClassifier.from_pretrained(folders[name])
            results["engines"][name] = {"export_seconds": round(export_seconds, 1),
                                        "load_rss_mib": round(rss_mib() - before)}
            print(name, "exported in", round(export_seconds, 1), "s", flush=True)
        for name, classifier in classifiers.items():
            classifier.classify(texts[:16], batch_size=16)  # warm-up
            results["engines"][name]["model_mib"] = round(folder_mib(folders[name]), 1)
        seconds, outputs = {name: [] for name in classifiers}, {}
        names = list(classifiers)
        for repeat in range(args.passes):
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                started = time.perf_counter()
                outputs[name] = classifiers[name].classify(texts, batch_size=16)
                seconds[name].append(time.perf_counter() - started)
                print(name, f"{len(texts) / seconds[name][-1]:.2f} texts/s", flush=True)
        labels = classifiers[names[0]].labels
        p = {name: np.array([[r["probabilities"][n] for n in labels] for r in out]) for name, out in outputs.items()}
        eager = p[names[0]]
        for name in names:
            predicted = [r["label"] for r in outputs[name]]
            results["engines"][name].update(
                texts_per_second=round(len(texts) / statistics.median(seconds[name]), 2),
                passes_seconds=[round(s, 1) for s in seconds[name]],
                max_abs_dp=float(np.abs(p[name] - eager).max()),
                argmax_agree=int((p[name].argmax(1) == eager.argmax(1)).sum()),
                f1_macro=round(float(f1_score(gold, predicted, average="macro")), 4))
        results["peak_rss_mib"] = round(__import__("resource").getrusage(
            __import__("resource").RUSAGE_SELF).ru_maxrss / 1024)
        for name in ("onnxruntime float32", "onnxruntime int8"):
            results["engines"][name]["profile"] = op_profile(folders[name], texts[:64], threads)
    scale = RESULTS / "scale.json"
    engines = json.loads(scale.read_text())["runs"].get("engines") if scale.exists() else None
    if engines:
        results["vllm"] = {key: engines[key] for key in ("machine", "vllm_version", "argmax_agree", "max_abs_dp",
                                                         "articles")} | {
            "texts_per_second": engines["vllm"]["texts_per_second"], "f1_macro": engines["vllm"]["f1_macro"],
            "torch_texts_per_second": engines["torch"]["texts_per_second"]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "onnx.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "onnx.md").write_text(report(results))
    print(report(results))
    return results


def report(results: dict) -> str:
    engines = results["engines"]
    eager = engines["torch float32 (eager)"]
    lines = [
        "# Serving on CPUs: onnxruntime float32 and int8 against the torch engine",
        "<!-- written by benchmarks/onnx_speed.py; do not edit by hand -->",
        f"Machine: {results['machine']}. Model: `{results['model']}`; {results['articles']} BBC test articles at "
        f"up to 256 tokens, `TextClassifier.classify`, batch {results['batch_size']}, {results['threads']} threads, "
        f"one process taking turns ({results['passes']} timed pass(es) each, median kept).",
        "",
        "| engine | texts/s | vs eager | max abs Δp vs eager | same label as eager | test macro-F1 | model file (MiB) | "
        "memory its load added (MiB) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, run in engines.items():
        lines.append(f"| {name} | {run['texts_per_second']:.2f} | {run['texts_per_second'] / eager['texts_per_second']:.2f}x | "
                     f"{run['max_abs_dp']:.1e} | {run['argmax_agree']} / {results['articles']} | {run['f1_macro']:.4f} | "
                     f"{run['model_mib']:,.0f} | {run['load_rss_mib']:,} |")
    vllm = results.get("vllm")
    if vllm:
        lines += ["", f"vLLM offline (the vLLM engine, `benchmarks/scale.py --parts engines`, another process; "
                  f"{vllm['machine']}; vLLM {vllm['vllm_version']}, float32): {vllm['texts_per_second']:.2f} texts/s "
                  f"against {vllm['torch_texts_per_second']:.2f} for the torch engine in that run, same label for "
                  f"{vllm['argmax_agree']} / {vllm['articles']}, max abs Δp {vllm['max_abs_dp']:.1e}, macro-F1 "
                  f"{vllm['f1_macro']:.4f}."]
    lines += ["", f"Peak resident memory of the whole run: {results['peak_rss_mib']:,} MiB.", "",
              "Where onnxruntime's time goes (its profiler, 64 articles, by operator type):", "",
              "| operator | float32 ms | float32 share | int8 operator | int8 ms | int8 share |",
              "|:--|--:|--:|:--|--:|--:|"]
    for a, b in zip(engines["onnxruntime float32"]["profile"], engines["onnxruntime int8"]["profile"]):
        lines.append(f"| {a['op']} | {a['ms']:,.0f} | {a['share']:.0%} | {b['op']} | {b['ms']:,.0f} | {b['share']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
