"""Label scoring with many labels: time and added peak memory per prompt, with the labels fed side by side under a
tree attention mask (the default) and with the prompt's cache repeated for every label (the fallback path).

    python benchmarks/scoring_memory.py            # writes benchmarks/results/scoring_memory.md and .json

Model: SmolLM2-135M-Instruct (bundled), the instruction approach's default prompt through its chat template, BBC
News test articles (one per prompt) cut to 256 tokens of text, float32. Labels are `topic 0` ... `topic N-1` (three
tokens each). Each setting runs in a fresh process; memory is the peak resident set size during scoring minus the
resident size before it (Linux `VmHWM`, reset through `/proc/self/clear_refs`) on the first call, so it counts the
caches, the logits and their copies; seconds are the best of the later calls.
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = (5, 50, 200)


def measure(labels: int, batch: int, tree: bool, repeats: int) -> dict:
    """One setting, in this process: seconds per prompt (best of `repeats`) and added peak memory in MiB."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer
    from hf_clf_ext.instruction import scoring
    from hf_clf_ext.bundled import bbc_news_splits, smollm2_model_dir

    torch.set_num_threads(2)
    if not tree:
        scoring.TREE_ATTENTION = ()
    folder = smollm2_model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    verbalizer = Verbalizer([f"topic {i}" for i in range(labels)])
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(), verbalizer)
    articles = bbc_news_splits()["test"]["text"][:batch]  # distinct articles: only the instructions are shared
    prompts = classifier.prompt_ids(
        [tokenizer.decode(tokenizer(article, add_special_tokens=False)["input_ids"][:256]) for article in articles])
    def run():
        return scoring.score_labels(model, prompts, classifier.tokens, pad_token_id=tokenizer.pad_token_id,
                                    batch_size=batch)

    with torch.no_grad():  # one-time costs of a first forward (kernels, thread pools) are not scoring's
        model(torch.tensor(prompts[:1]), logits_to_keep=1)
    # The first call measures memory: later ones reuse what the allocator kept and would show no growth.
    before = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current size
    run()
    peak = _status_mib("VmHWM") - before
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return {"labels": labels, "batch": batch, "path": "tree attention" if tree else "repeated cache",
            "prompt_tokens": len(prompts[0]), "label_tokens": sum(len(ids) for ids in classifier.tokens.first),
            "seconds_per_prompt": best / batch, "peak_mib": peak, "peak_mib_per_prompt": peak / batch}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"No {field} in /proc/self/status.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # labels,batch,tree: run one setting, print JSON
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.one:
        labels, batch, tree = args.one.split(",")
        print("RESULT " + json.dumps(measure(int(labels), int(batch), tree == "1", args.repeats)))
        return
    # The repeated cache at batch 8 and 200 labels would need about 10 GB: measured at batch 1 only.
    settings = [(n, 1, True) for n in LABELS] + [(n, 8, True) for n in LABELS] + [(n, 1, False) for n in LABELS]
    rows = []
    for labels, batch, tree in settings:
        done = subprocess.run([sys.executable, __file__, "--one", f"{labels},{batch},{int(tree)}", "--repeats",
                               str(args.repeats)], capture_output=True, text=True, check=True)
        row = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")))
        print(row, flush=True)
        rows.append(row)
    machine = f"{platform.machine()}, {platform.processor() or 'CPU'}, 2 threads"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scoring_memory.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = [
        "# Label scoring with many labels", "",
        "`benchmarks/scoring_memory.py`: SmolLM2-135M-Instruct, float32, the default chat prompt (which lists the "
        "labels) around BBC test articles cut to 256 tokens, a different article per prompt; labels `topic 0` ... "
        f"`topic N-1`. Machine: {machine}. "
        "Memory: peak resident size during scoring minus the size before it. Seconds: best of "
        f"{args.repeats} runs, per prompt.", "",
        "| labels | label tokens | prompt tokens (first) | batch | path | seconds / prompt | added peak MiB | "
        "MiB / prompt |",
        "|--:|--:|--:|--:|:--|--:|--:|--:|",
    ]
    for row in rows:
        lines.append(f"| {row['labels']} | {row['label_tokens']} | {row['prompt_tokens']} | {row['batch']} | "
                     f"{row['path']} | {row['seconds_per_prompt']:.2f} | {row['peak_mib']:.0f} | "
                     f"{row['peak_mib_per_prompt']:.0f} |")
    (RESULTS / "scoring_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
