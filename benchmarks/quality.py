"""Quality on BBC News (SmolLM2-135M-Instruct, 445 fixed test articles) against what users would pick instead.

    python benchmarks/quality.py --methods tfidf last_token stock instruction --sizes 100 400 --seeds 0 1 2
    python benchmarks/quality.py --report

Methods: `last_token` (our trainer, the embedded default config), `instruction` (our SFT recipe; constrained
decoding and label scoring), `stock` (transformers `AutoModelForSequenceClassification` + PEFT LoRA r=8 with the
same epochs, batch, length and learning rate, one learning rate, no suffix), `tfidf` (TF-IDF + logistic
regression). Each size draws `size / 5` training and 20 validation articles per topic with the seed; the test set
is the same for every run. ECE is reported before and after a temperature fitted on the validation split.

Each finished run is appended to `benchmarks/results/quality_runs.jsonl` and skipped when asked again, so the grid
can be filled over several sessions; `--report` writes `benchmarks/results/quality.md` from what has run.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from baselines import machine, stock_classifier, stock_encode, stock_training_arguments

from hf_clf_ext import jobs
from hf_clf_ext.bundled import bbc_news_splits, smollm2_model_dir
from hf_clf_ext.calibration import fit_temperature
from hf_clf_ext.metrics import build_compute_metrics, logits_from_probabilities, probabilities_from_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "quality_runs.jsonl"
LAST_TOKEN_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml"
INSTRUCTION_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_instruction.yaml"
PROBLEM = "single_label_classification"
METHODS = ("tfidf", "last_token", "stock", "instruction")


def scores(logits_val, labels_val, logits_test, labels_test, names) -> dict:
    """Test metrics, with ECE before and after a temperature fitted on validation."""
    compute = build_compute_metrics(PROBLEM, dict(enumerate(names)))
    before = compute(_prediction(logits_test, labels_test))
    temperature = fit_temperature(logits_val, labels_val, PROBLEM)
    after = compute(_prediction(np.asarray(logits_test) / temperature, labels_test))
    return {
        "accuracy": before["accuracy"], "f1_macro": before["f1_macro"], "f1_micro": before["f1_micro"],
        "ece_before": before["ece"], "ece_after": after["ece"], "temperature": temperature,
    }


def _prediction(logits, labels):
    from transformers import EvalPrediction

    return EvalPrediction(predictions=np.asarray(logits), label_ids=np.asarray(labels))


def run_tfidf(splits, seed: int, workdir: str) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    features = vectorizer.fit_transform(splits["train"]["text"])
    model = LogisticRegression(C=10.0, max_iter=5000, random_state=seed).fit(features, splits["train"]["label"])
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test_logits = model.predict_log_proba(vectorizer.transform(splits["test"]["text"]))
    infer = time.perf_counter() - started
    val_logits = model.predict_log_proba(vectorizer.transform(splits["validation"]["text"]))
    return {**scores(val_logits, splits["validation"]["label"], test_logits, splits["test"]["label"], _names(splits)),
            "trainable_parameters": int(model.coef_.size + model.intercept_.size), "train_seconds": train_seconds,
            "test_examples_per_second": len(splits["test"]) / infer}


def run_last_token(splits, seed: int, workdir: str) -> dict:
    from hf_clf_ext import LastTokenClassifierTrainer
    from hf_clf_ext.last_token_config import LastTokenClassifierTrainingArguments

    script, args = jobs.parse_config(LastTokenClassifierTrainingArguments, [
        "--config", str(LAST_TOKEN_CONFIG), "--output_dir", workdir, "--seed", str(seed), "--calibrate", "false",
        "--save_total_limit", "1", "--disable_tqdm", "true",
    ])
    trainer = LastTokenClassifierTrainer(jobs.resolve_model(script)[0], args=args, train_dataset=splits["train"],
                                         eval_dataset=splits["validation"])
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    val = trainer.predict(trainer.eval_dataset)
    test_set = trainer.prepare_dataset(splits["test"])
    started = time.perf_counter()
    test = trainer.predict(test_set)
    infer = time.perf_counter() - started
    return {**scores(val.predictions, val.label_ids, test.predictions, test.label_ids, _names(splits)),
            "trainable_parameters": trainer.model.get_nb_trainable_parameters()[0], "train_seconds": train_seconds,
            "test_examples_per_second": len(test_set) / infer}


def run_stock(splits, seed: int, workdir: str) -> dict:
    """What a transformers user writes without this project: the stock head, one learning rate, no suffix."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    set_seed(seed)
    path, names = smollm2_model_dir(), _names(splits)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = stock_classifier(path, names, tokenizer)
    data = {name: stock_encode(split, tokenizer, 256) for name, split in splits.items()}
    trainer = Trainer(model=model, args=stock_training_arguments(workdir, seed), train_dataset=data["train"],
                      eval_dataset=data["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer, compute_metrics=build_compute_metrics(PROBLEM, dict(enumerate(names))))
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    val = trainer.predict(data["validation"])
    started = time.perf_counter()
    test = trainer.predict(data["test"])
    infer = time.perf_counter() - started
    return {**scores(val.predictions, val.label_ids, test.predictions, test.label_ids, names),
            "trainable_parameters": model.get_nb_trainable_parameters()[0], "train_seconds": train_seconds,
            "test_examples_per_second": len(data["test"]) / infer}


def run_instruction(splits, seed: int, workdir: str) -> list[dict]:
    """Two rows: constrained decoding (hard labels) and label scoring (probabilities)."""
    from hf_clf_ext import InstructionSFTRecipe
    from hf_clf_ext.instruction_config import InstructionSFTConfig

    script, args = jobs.parse_config(InstructionSFTConfig, [
        "--config", str(INSTRUCTION_CONFIG), "--output_dir", workdir, "--seed", str(seed), "--disable_tqdm", "true",
    ])
    recipe = InstructionSFTRecipe(jobs.resolve_model(script)[0], args=args, train_dataset=splits["train"],
                                  eval_dataset=splits["validation"])
    started = time.perf_counter()
    recipe.train()
    train_seconds = time.perf_counter() - started
    names = _names(splits)
    test_texts, test_labels = list(splits["test"]["text"]), list(splits["test"]["label"])
    rows = []
    for method in ("generate", "score"):
        val = recipe.classify(recipe.eval_texts, method=method)
        started = time.perf_counter()
        test = recipe.classify(test_texts, method=method)
        infer = time.perf_counter() - started
        val_logits = logits_from_probabilities(probabilities_from_results(val, names), PROBLEM)
        test_logits = logits_from_probabilities(probabilities_from_results(test, names), PROBLEM)
        val_labels = [ids[0] for ids in recipe.eval_label_ids]
        rows.append({"variant": method, **scores(val_logits, val_labels, test_logits, test_labels, names),
                     "trainable_parameters": recipe.model.get_nb_trainable_parameters()[0],
                     "train_seconds": train_seconds, "test_examples_per_second": len(test_texts) / infer})
    return rows


def _names(splits) -> list[str]:
    return splits["train"].features["label"].names


RUNNERS = {"tfidf": run_tfidf, "last_token": run_last_token, "stock": run_stock, "instruction": run_instruction}


def done() -> set[tuple]:
    if not RUNS.exists():
        return set()
    return {(r["method"], r["size"], r["seed"]) for r in map(json.loads, RUNS.read_text().splitlines())}


def run(methods, sizes, seeds) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    finished = done()
    for size in sizes:
        for seed in seeds:
            splits = bbc_news_splits(train_per_class=size // 5, validation_per_class=20, seed=seed)
            for method in methods:
                if (method, size, seed) in finished:
                    continue
                print(f"== {method} size={size} seed={seed}", flush=True)
                with tempfile.TemporaryDirectory() as workdir:
                    results = RUNNERS[method](splits, seed, workdir)
                for row in results if isinstance(results, list) else [results]:
                    row = {"method": method, "size": size, "seed": seed, "machine": machine(), **row}
                    with RUNS.open("a", encoding="utf-8") as file:
                        file.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


def report() -> str:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.exists() else []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        name = row["method"] + (f" ({row['variant']})" if row.get("variant") else "")
        groups.setdefault((row["size"], name), []).append(row)
    columns = ("accuracy", "f1_macro", "f1_micro", "ece_before", "ece_after", "trainable_parameters", "train_seconds",
               "test_examples_per_second")
    lines = ["# Quality on BBC News (SmolLM2-135M-Instruct, 445 fixed test articles)", "",
             ("Mean ± standard deviation over seeds (n = number of seeds run). ECE after: temperature fitted on the "
              "validation split. Generated by `benchmarks/quality.py --report`. Times are wall-clock on the machine "
              "named, which may have been running other work: they are not speed measurements."), ""]
    machines = sorted({row["machine"] for row in rows})
    lines += [f"Machine: {'; '.join(machines) or '-'}", ""]
    lines.append("| train size | method | n | " + " | ".join(columns) + " |")
    lines.append("|---|---|---|" + "---|" * len(columns))
    for (size, name), group in sorted(groups.items()):
        cells = []
        for column in columns:
            values = [row[column] for row in group if row.get(column) is not None]
            if not values:
                cells.append("-")
            elif column == "trainable_parameters":
                cells.append(f"{int(values[0]):,}")
            else:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}" if column != "train_seconds"
                             and column != "test_examples_per_second" else f"{statistics.mean(values):.1f}")
        lines.append(f"| {size} | {name} | {len(group)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "quality.md").write_text(text)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--report", action="store_true", help="Only write the report from the runs so far.")
    args = parser.parse_args(argv)
    if not args.report:
        run(args.methods, args.sizes, args.seeds)
    sys.stdout.write(report())


if __name__ == "__main__":
    main()
