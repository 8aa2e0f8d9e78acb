"""Post-hoc calibration fitted on a validation set: temperature scaling and multi-label decision thresholds.

Both leave the model untouched: the temperature divides the logits (`probabilities_from_logits(..., temperature=T)`)
and the thresholds go to `build_compute_metrics(..., threshold=...)` or to whatever turns probabilities into labels.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from .labels import PROBLEM_TYPES

TEMPERATURE_RANGE = (0.05, 20.0)
THRESHOLD_GRID = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.01), 2))

__all__ = ["THRESHOLD_GRID", "TEMPERATURE_RANGE", "calibrate_logits", "fit_temperature", "tune_thresholds"]


def fit_temperature(logits: Any, labels: Any, problem_type: str) -> float:
    """The temperature T minimizing the validation NLL of `logits / T` (Guo et al., 2017), within TEMPERATURE_RANGE.

    The NLL (cross-entropy, or binary cross-entropy for multi-label) is convex in 1/T, hence unimodal in log T, so a
    bounded scalar search finds the global minimum with no step size to tune, even when it lies at a bound (perfectly
    separated validation data drives T towards 0). T > 1 softens over-confident logits, T < 1 sharpens.
    """
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}.")
    z = _matrix(logits, "logits")
    if problem_type == "multi_label_classification":
        y = _multi_hot(labels, z.shape)

        def nll(log_t: float) -> float:
            scaled = z / math.exp(log_t)
            return float(np.mean(np.logaddexp(0.0, scaled) - y * scaled))

    else:
        y = _class_ids(labels, z.shape)
        true_logit = z[np.arange(len(y)), y]

        def nll(log_t: float) -> float:
            t = math.exp(log_t)
            return float(np.mean(logsumexp(z / t, axis=1) - true_logit / t))

    low, high = TEMPERATURE_RANGE
    result = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-6})
    return float(np.clip(math.exp(result.x), low, high))


def calibrate_logits(logits: Any, labels: Any, problem_type: str, per_class: bool = False
                     ) -> tuple[float, list[float] | None]:
    """What every classifier fits on its validation logits: the temperature, and for multi-label the decision
    thresholds (one per label) tuned on the probabilities at that temperature; `(temperature, None)` for
    single-label."""
    from .labels import decision_thresholds
    from .metrics import probabilities_from_logits

    temperature = fit_temperature(logits, labels, problem_type)
    if problem_type != "multi_label_classification":
        return temperature, None
    probabilities = probabilities_from_logits(logits, problem_type, temperature)
    tuned = tune_thresholds(probabilities, labels, per_class=per_class)
    return temperature, decision_thresholds(tuned, probabilities.shape[1]).tolist()


def tune_thresholds(
    probabilities: Any, labels: Any, per_class: bool, candidates: Sequence[float] = THRESHOLD_GRID,
    at_least_one: bool = False,
) -> float | list[float]:
    """Multi-label decision thresholds maximizing validation F1 (a label is predicted when p >= threshold).

    Global (`per_class=False`): the one threshold maximizing micro-F1. Per class: each class's threshold maximizes its
    own F1; a class without positives in the validation set keeps 0.5, as there is nothing to fit. Ties go to the
    candidate closest to 0.5, then to the smaller one, so results are deterministic. A fixed grid of candidates
    (rather than every observed probability) keeps the thresholds from fitting single validation examples.

    `at_least_one`: tuned for the rule that names the most probable label where none reaches its threshold
    (`labels.decide`, the instruction approach's), the rule the thresholds will serve under. That couples the
    classes, so per class the thresholds start from the independent ones and move one class at a time to the
    candidate that maximizes macro-F1 (over the classes with positives) until none moves.
    """
    probs = _matrix(probabilities, "probabilities")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must lie within [0, 1] (apply a sigmoid to the logits).")
    positive = _multi_hot(labels, probs.shape).astype(bool)
    grid = np.asarray(candidates, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or grid.min() < 0 or grid.max() > 1:
        raise ValueError("candidates must be a non-empty sequence of thresholds within [0, 1].")

    true_pos, n_predicted = _counts(probs, positive, grid)
    n_positive = positive.sum(axis=0)
    if not per_class:
        if not n_positive.any():
            return 0.5
        if at_least_one:
            return _best(grid, np.array([_served_f1(probs, positive, np.full(probs.shape[1], t), micro=True)
                                         for t in grid]))
        return _best(grid, _f1(true_pos.sum(axis=1), n_predicted.sum(axis=1), n_positive.sum()))
    f1 = _f1(true_pos, n_predicted, n_positive)
    thresholds = [_best(grid, f1[:, c]) if n_positive[c] else 0.5 for c in range(probs.shape[1])]
    if at_least_one:
        fitted = np.flatnonzero(n_positive)
        for _ in range(10):  # coordinate ascent: macro-F1 never falls; ties could cycle, hence the bound
            moved = False
            for c in fitted:
                trial = np.array(thresholds)
                scores = []
                for t in grid:
                    trial[c] = t
                    scores.append(_served_f1(probs, positive, trial, micro=False, classes=fitted))
                best = _best(grid, np.array(scores))
                moved |= best != thresholds[c]
                thresholds[c] = best
            if not moved:
                break
    return thresholds


def _served_f1(probs: np.ndarray, positive: np.ndarray, thresholds: np.ndarray, micro: bool, classes=None) -> float:
    """Micro- or macro-F1 (over `classes`) of the labels `labels.decide` names with at least one label a row."""
    from .labels import decide

    hits = decide(probs, True, thresholds, at_least_one=True).astype(bool)
    true_pos, n_predicted, n_positive = (hits & positive).sum(axis=0), hits.sum(axis=0), positive.sum(axis=0)
    if micro:
        return float(_f1(true_pos.sum(), n_predicted.sum(), n_positive.sum()))
    return float(np.mean(_f1(true_pos, n_predicted, n_positive)[classes]))


def _counts(probs: np.ndarray, positive: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predicted positives per (threshold, class), one threshold at a time to bound memory."""
    true_pos, n_predicted = np.zeros((2, len(grid), probs.shape[1]), dtype=np.int64)
    for i, threshold in enumerate(grid):
        hits = probs >= threshold
        true_pos[i], n_predicted[i] = (hits & positive).sum(axis=0), hits.sum(axis=0)
    return true_pos, n_predicted


def _f1(true_pos: np.ndarray, n_predicted: np.ndarray, n_positive: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #positive), 0 when both are empty."""
    denominator = n_predicted + n_positive
    return np.divide(2.0 * true_pos, denominator, out=np.zeros(np.shape(true_pos)), where=denominator > 0)


def _best(grid: np.ndarray, scores: np.ndarray) -> float:
    """Highest score; ties to the threshold closest to 0.5 (rounded, so 0.45 and 0.55 tie), then the smaller one."""
    return float(grid[np.lexsort((grid, np.round(np.abs(grid - 0.5), 9), -scores))[0]])


def _matrix(values: Any, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"{name} must be a non-empty (n, num_labels) array, got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contain NaN or infinite values.")
    return matrix


def _class_ids(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    ids = np.asarray(labels)
    n, num_labels = shape
    if ids.shape != (n,):
        raise ValueError(f"Expected {n} class ids for single-label logits of shape {shape}, got shape {ids.shape}.")
    if num_labels < 2:
        raise ValueError("Single-label classification needs at least 2 classes.")
    if not np.array_equal(ids, np.round(ids)) or ids.min() < 0 or ids.max() >= num_labels:
        raise ValueError(f"Labels must be integer class ids in [0, {num_labels}).")
    return ids.astype(np.int64)


def _multi_hot(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    targets = np.asarray(labels, dtype=np.float64)
    if targets.shape != shape:
        raise ValueError(f"Multi-label labels must have the shape of the scores {shape}, got {targets.shape}.")
    if not np.isin(targets, (0.0, 1.0)).all():
        raise ValueError("Multi-label labels must be multi-hot (only 0 and 1).")
    return targets
