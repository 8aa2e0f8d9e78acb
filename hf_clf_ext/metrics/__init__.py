"""Evaluation for fine-tuned classifiers: local `evaluate` modules and a `compute_metrics` for `transformers.Trainer`.

The modules live in this package (one directory per metric, `<name>/<name>.py`) and load by absolute path, so they
work offline: `evaluate.load` only tries the Hub for relative names like `"f1"` or `"user/metric"`.
"""

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np

from ..labels import PROBLEM_TYPES, decide, decision_thresholds

METRICS_DIR = Path(__file__).resolve().parent
_CONFIG_NAMES = {"single_label_classification": "single_label", "multi_label_classification": "multi_label"}

__all__ = ["METRICS_DIR", "build_compute_metrics", "headline", "load_metric", "metrics_from_results",
           "probabilities_from_logits"]


def load_metric(name: str, config_name: str | None = None, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load one of the bundled metrics (`"classification"`, `"calibration"`) without touching the network.

    `config_name` is `"single_label"` or `"multi_label"`. `kwargs` go to `evaluate.load`; `keep_in_memory` defaults
    to True so computing writes no Arrow cache files or lock files.
    """
    available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
    if name not in available:
        raise ValueError(f"Unknown metric {name!r}; the bundled metrics are {available}.")
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(METRICS_DIR / name), config_name, **kwargs)


def probabilities_from_logits(logits: Any, problem_type: str, temperature: float = 1.0) -> np.ndarray:
    """Softmax (single-label) or sigmoid (multi-label) of `logits / temperature`, in float64 for stable metrics."""
    _check_problem_type(problem_type)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if scaled.ndim != 2 or scaled.size == 0:
        raise ValueError(f"logits must be a non-empty (n, num_labels) array, got shape {scaled.shape}.")
    if problem_type == "multi_label_classification":
        return np.exp(-np.logaddexp(0.0, -scaled))
    exp = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def build_compute_metrics(
    problem_type: str,
    id2label: Mapping[int, str],
    threshold: float | Sequence[float] = 0.5,
    *,
    hard_predictions: bool = False,
) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer` reporting classification and calibration scores.

    It takes an `EvalPrediction` (logits, or a tuple whose first element is the logits; class ids or multi-hot
    labels) and returns a flat dict of floats: accuracy, precision/recall/F1 micro/macro/weighted, `f1_<label>`,
    ece, brier, roc_auc (NaN when no class has both outcomes), plus subset_accuracy and hamming_loss for multi-label.
    Multi-label predictions are probabilities >= `threshold` (one float, or one per class).

    `hard_predictions=True` (labels without probabilities, e.g. constrained decoding): label metrics only, since the
    ECE of one-hot "probabilities" is just the error rate and their Brier score and ROC-AUC say nothing more.
    """
    config_name = _check_problem_type(problem_type)
    names = _label_names(id2label)
    thresholds = decision_thresholds(threshold, len(names))
    classification = load_metric("classification", config_name)
    calibration = load_metric("calibration", config_name)
    reserved = {f"f1_{avg}" for avg in ("micro", "macro", "weighted", "per_class")}
    if reserved & {f"f1_{name}" for name in names}:
        raise ValueError(f"Label names would overwrite summary keys {sorted(reserved)}: {names}.")

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        probs = probabilities_from_logits(logits, problem_type)
        if probs.shape[1] != len(names):
            raise ValueError(f"Got logits for {probs.shape[1]} classes but id2label names {len(names)}.")
        labels = np.asarray(eval_pred.label_ids)
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("label_ids must be class ids or multi-hot 0/1 targets, not soft labels.")
        references = labels.astype(np.int64)
        predictions = decide(probs, problem_type == "multi_label_classification", thresholds)
        scores = classification.compute(predictions=predictions, references=references, label_names=names)
        results = {key: value for key, value in scores.items() if key != "f1_per_class"}
        if hard_predictions:
            return results
        calibration_scores = calibration.compute(probabilities=probs, references=references)
        roc_auc = calibration_scores["roc_auc"]
        results |= {
            "ece": calibration_scores["ece"],
            "brier": calibration_scores["brier"],
            "roc_auc": float("nan") if roc_auc is None else roc_auc,
        }
        return results

    return compute_metrics


def _check_problem_type(problem_type: str) -> str:
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}.")
    return _CONFIG_NAMES[problem_type]


def _label_names(id2label: Mapping[int, str]) -> list[str]:
    """Names in label-id order; keys may be strings, as after a JSON round trip of a config."""
    by_id = {int(key): str(name) for key, name in id2label.items()}
    if sorted(by_id) != list(range(len(by_id))) or not by_id:
        raise ValueError(f"id2label must map 0..num_labels-1 to names, got keys {sorted(by_id)}.")
    names = [by_id[i] for i in range(len(by_id))]
    if len(set(names)) != len(names):
        raise ValueError(f"Label names must be unique, got {names}.")
    return names


def probabilities_from_results(results: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """`(n, num_labels)` from classifier results: their `probabilities`, or 0/1 for the labels they name."""
    names = list(names)
    if results and "probabilities" in results[0]:
        return np.array([[result["probabilities"][name] for name in names] for result in results])
    return named_from_results(results, names)


def named_from_results(results: Sequence[dict], names: Sequence[str]) -> np.ndarray:
    """`(n, num_labels)` 0/1: the labels each result names (`"label"` or `"labels"`)."""
    names = list(names)
    hot = np.zeros((len(results), len(names)))
    for row, result in enumerate(results):
        for name in result["labels"] if "labels" in result else [result["label"]]:
            hot[row, names.index(name)] = 1.0
    return hot


def metrics_from_results(results: Sequence[dict], references: Any, problem_type: str,
                         id2label: Mapping[int, str]) -> dict[str, float]:
    """Metrics of classifier results (`classify_texts`, `classify`, `TextClassifier.classify`): label metrics of the
    labels they name, and calibration metrics (ECE, Brier, ROC-AUC) only when they carry probabilities."""
    from transformers import EvalPrediction

    names = _label_names(id2label)
    references = np.asarray(references)

    def compute(values, hard):
        logits = logits_from_probabilities(values, problem_type)
        return build_compute_metrics(problem_type, id2label, hard_predictions=hard)(
            EvalPrediction(predictions=logits, label_ids=references))

    metrics = compute(named_from_results(results, names), hard=True)
    if results and "probabilities" in results[0]:
        metrics = {**compute(probabilities_from_results(results, names), hard=False), **metrics}
    return metrics


def logits_from_probabilities(probabilities: Any, problem_type: str) -> np.ndarray:
    """Logits whose softmax (single-label) or sigmoid (multi-label) gives back `probabilities`, so that scores from
    other classifiers go through `build_compute_metrics` too."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    _check_problem_type(problem_type)
    return np.log(p / (1 - p)) if problem_type == "multi_label_classification" else np.log(p)


def headline(results: Mapping[str, float], key: str, methods: Sequence[str] = ()) -> float | None:
    """`results[key]`, or where an approach classifies in several ways (result keys `<key>_<method>`) the first of
    `methods` that reports it: an instruction classifier's `test_f1_macro` is its constrained decoding's and its
    `test_ece` its label scoring's (`methods=("generate", "score")`), since decoding gives no probabilities."""
    for name in (key, *(f"{key}_{method}" for method in methods)):
        if name in results:
            return results[name]
    return None

