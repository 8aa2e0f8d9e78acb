"""Serving on CPUs past float32 eager: onnxruntime float32 and int8 against the torch engine, in one run.

    python benchmarks/onnx_speed.py --model outputs/smollm2-135m-bbc-last-token

The main job's classifier is exported (`hf_clf_ext.export.export_onnx`, float32 and int8: block-wise int8 weights)
and the 445 BBC test articles (256 tokens, as trained) go through `TextClassifier.classify` on each engine, batch 16,
the same number of threads, in one process taking turns (the order rotates each pass; the median pass is kept). Two
int8 routes the package does not ship run beside them, to show why: onnxruntime's dynamic quantization of the float32
export (8-bit activations, one scale per batch) and torch's dynamic int8 linears (`torch.ao`, fbgemm; the head stays
float32). For each: texts/s, the largest probability difference and the label agreement with eager float32, test
macro-F1 and the model file's size. onnxruntime's profiler then shows where its time goes, by operator type.
The vLLM engine's figure comes from `benchmarks/scale.py --parts engines` (another process, its own virtualenv).
Writes benchmarks/results/onnx.md and onnx.json.
"""

import argparse
import json
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


def dynamic_int8(float32_folder: Path, folder: Path) -> None:
    """The route not shipped: onnxruntime's dynamic quantization of a float32 export (weights per channel; each
    batch's activations to 8 bits with one scale), attention's activation products left float32."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(float32_folder, folder)
    (folder / "model.onnx").unlink()
    quantize_dynamic(float32_folder / "model.onnx", folder / "model.onnx", op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})


def torch_dynamic_int8(classifier) -> None:
    """The torch route not shipped: `torch.ao` dynamic int8 linears (fbgemm) in place, the head left float32."""
    import torch

    score = classifier.model.score
    classifier.model = torch.ao.quantization.quantize_dynamic(classifier.model, {torch.nn.Linear}, dtype=torch.qint8)
    classifier.model.score = score


def op_profile(folder: Path, texts: list[str], threads: int, top: int = 10) -> list[dict]:
    """Where onnxruntime spends one pass over `texts`: milliseconds by operator type, largest first."""
    import onnxruntime

    from hf_clf_ext.engines.onnxruntime_engine import OnnxRuntimeEngine

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    engine = OnnxRuntimeEngine(str(folder), threads=threads, options=options, providers=["CPUExecutionProvider"])
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
        classifiers["torch float32 (eager)"] = TextClassifier.from_pretrained(args.model, dtype=torch.float32)
        for quantize in (None, "int8"):
            name = f"onnxruntime {quantize or 'float32'}"
            folders[name] = work / (quantize or "float32")
            started = time.perf_counter()
            export_onnx(args.model, folders[name], quantize=quantize)
            results["engines"][name] = {"export_seconds": round(time.perf_counter() - started, 1)}
            classifiers[name] = TextClassifier.from_pretrained(folders[name])
            print(name, "exported in", results["engines"][name]["export_seconds"], "s", flush=True)
        name = "onnxruntime int8 dynamic (not shipped)"
        folders[name] = work / "dynamic"
        dynamic_int8(folders["onnxruntime float32"], folders[name])
        classifiers[name] = TextClassifier.from_pretrained(folders[name])
        name = "torch int8 dynamic (not shipped)"
        classifiers[name] = TextClassifier.from_pretrained(args.model, dtype=torch.float32)
        torch_dynamic_int8(classifiers[name])
        results["engines"] = {name: results["engines"].get(name, {}) for name in classifiers}  # eager first
        for name, classifier in classifiers.items():
            classifier.classify(texts[:16], batch_size=16)  # warm-up
            results["engines"][name]["model_mib"] = round(folder_mib(folders[name]), 1) if name in folders else None
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
        for name in ("onnxruntime float32", "onnxruntime int8", "onnxruntime int8 dynamic (not shipped)"):
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
        "| engine | texts/s | vs eager | max abs Δp vs eager | same label as eager | test macro-F1 | "
        "model file (MiB) |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for name, run in engines.items():
        lines.append(f"| {name} | {run['texts_per_second']:.2f} | "
                     f"{run['texts_per_second'] / eager['texts_per_second']:.2f}x | "
                     f"{run['max_abs_dp']:.1e} | {run['argmax_agree']} / {results['articles']} | "
                     f"{run['f1_macro']:.4f} | "
                     f"{'-' if run['model_mib'] is None else format(run['model_mib'], ',.0f')} |")
    vllm = results.get("vllm")
    if vllm:
        lines += ["", f"vLLM offline (the vLLM engine, `benchmarks/scale.py --parts engines`, another process; "
                  f"{vllm['machine']}; vLLM {vllm['vllm_version']}, float32): {vllm['texts_per_second']:.2f} texts/s "
                  f"against {vllm['torch_texts_per_second']:.2f} for the torch engine in that run, same label for "
                  f"{vllm['argmax_agree']} / {vllm['articles']}, max abs Δp {vllm['max_abs_dp']:.1e}, macro-F1 "
                  f"{vllm['f1_macro']:.4f}."]
    lines += ["", f"Peak resident memory of the whole run: {results['peak_rss_mib']:,} MiB.", "",
              "Where onnxruntime's time goes (its profiler, 64 articles, by operator type):", "",
              "| float32 operator | ms | share | int8 operator | ms | share | int8 dynamic operator | ms | share |",
              "|:--|--:|--:|:--|--:|--:|:--|--:|--:|"]
    profiles = [engines[name]["profile"] for name in
                ("onnxruntime float32", "onnxruntime int8", "onnxruntime int8 dynamic (not shipped)")]
    for row in zip(*profiles):
        lines.append("| " + " | ".join(f"{r['op']} | {r['ms']:,.0f} | {r['share']:.0%}" for r in row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
