"""Temperature scaling and threshold tuning recover known, planted values."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hf_clf_ext.calibration import TEMPERATURE_RANGE, THRESHOLD_GRID, fit_temperature, tune_thresholds

SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def _calibrated_single_label(n: int = 4000, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): z itself is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, num_classes))
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return z, labels


def _calibrated_multi_label(n: int = 4000, num_labels: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, num_labels))
    return z, (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float64)


def test_calibrated_logits_keep_temperature_one():
    assert fit_temperature(*_calibrated_single_label(), SINGLE) == pytest.approx(1.0, rel=0.1)
    assert fit_temperature(*_calibrated_multi_label(), MULTI) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("scale", [4.0, 5.0, 1 / 3])
def test_temperature_recovers_the_logit_scale(scale):
    z, labels = _calibrated_single_label()
    assert fit_temperature(scale * z, labels, SINGLE) == pytest.approx(scale, rel=0.15)


def test_temperature_recovers_the_logit_scale_multi_label():
    z, labels = _calibrated_multi_label()
    assert fit_temperature(3 * z, labels, MULTI) == pytest.approx(3.0, rel=0.15)


def test_temperature_is_equivariant_to_logit_scaling():
    """Scaling the logits by c scales the NLL-optimal temperature by c exactly, so the search must be accurate."""
    z, labels = _calibrated_single_label(n=500, seed=3)
    base = fit_temperature(z, labels, SINGLE)
    assert fit_temperature(2.5 * z, labels, SINGLE) == pytest.approx(2.5 * base, rel=1e-4)


def test_temperature_stays_in_range_on_separable_data():
    logits = np.array([[10.0, -10.0], [-10.0, 10.0]])
    temperature = fit_temperature(logits, np.array([0, 1]), SINGLE)
    assert TEMPERATURE_RANGE[0] <= temperature < 1.0
    always_wrong = fit_temperature(logits, np.array([1, 0]), SINGLE)
    assert always_wrong == pytest.approx(TEMPERATURE_RANGE[1], rel=1e-3)


@pytest.mark.parametrize(
    "logits, labels, problem_type, match",
    [
        (np.zeros((3, 2)), np.zeros(3, dtype=int), "regression", "problem_type"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), SINGLE, "non-empty"),
        (np.zeros((3, 2)), np.zeros(4, dtype=int), SINGLE, "Expected 3 class ids"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), SINGLE, r"\[0, 2\)"),
        (np.zeros((3, 2)), np.array([0.0, 0.5, 1.0]), SINGLE, "integer"),
        (np.zeros((3, 1)), np.zeros(3, dtype=int), SINGLE, "at least 2"),
        (np.zeros((3, 2)), np.zeros((3, 3)), MULTI, "shape"),
        (np.zeros((3, 2)), np.full((3, 2), 0.5), MULTI, "multi-hot"),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), MULTI, "NaN"),
    ],
)
def test_fit_temperature_rejects_bad_input(logits, labels, problem_type, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels, problem_type)


def test_per_class_thresholds_find_planted_values():
    rng = np.random.default_rng(0)
    probs = rng.random((2000, 3))
    planted = [0.3, 0.7, 0.55]
    assert tune_thresholds(probs, (probs >= planted).astype(int), per_class=True) == pytest.approx(planted)


def test_global_threshold_finds_planted_value():
    rng = np.random.default_rng(1)
    probs = rng.random((2000, 4))
    assert tune_thresholds(probs, probs >= 0.35, per_class=False) == pytest.approx(0.35)


def test_tuned_thresholds_are_the_best_on_the_grid_for_noisy_labels():
    """With label noise no threshold is perfect; the tuned ones must still reach the grid's best F1 (by sklearn)."""
    rng = np.random.default_rng(2)
    probs = rng.random((600, 3))
    labels = (rng.random((600, 3)) < probs**2).astype(int)
    best_micro = max(f1_score(labels, probs >= t, average="micro") for t in THRESHOLD_GRID)
    threshold = tune_thresholds(probs, labels, per_class=False)
    assert f1_score(labels, probs >= threshold, average="micro") == pytest.approx(best_micro)
    for c, threshold in enumerate(tune_thresholds(probs, labels, per_class=True)):
        best = max(f1_score(labels[:, c], probs[:, c] >= t) for t in THRESHOLD_GRID)
        assert f1_score(labels[:, c], probs[:, c] >= threshold) == pytest.approx(best)


def test_ties_prefer_thresholds_close_to_one_half():
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.9, 0.1]])
    labels = probs > 0.5  # every threshold in (0.2, 0.8] is perfect for both classes
    assert tune_thresholds(probs, labels, per_class=True) == [0.5, 0.5]
    assert tune_thresholds(probs, labels, per_class=False) == 0.5
    for candidates in ([0.6, 0.4, 0.95], [0.7, 0.3], [0.57, 0.43]):  # |0.7 - 0.5| < |0.3 - 0.5| in floats
        assert tune_thresholds(probs, labels, per_class=False, candidates=candidates) == min(candidates[:2])


def test_class_without_positives_keeps_one_half():
    probs = np.array([[0.9, 0.3], [0.2, 0.35], [0.8, 0.1]])
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    assert tune_thresholds(probs, labels, per_class=True)[1] == 0.5
    assert tune_thresholds(probs, np.zeros((3, 2)), per_class=False) == 0.5


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (np.zeros((0, 2)), np.zeros((0, 2)), "non-empty"),
        (np.full((2, 2), 0.5), np.zeros((2, 3)), "shape"),
        (np.full((2, 2), 1.5), np.zeros((2, 2)), r"\[0, 1\]"),
        (np.full((2, 2), 0.5), np.full((2, 2), 2), "multi-hot"),
    ],
)
def test_tune_thresholds_rejects_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        tune_thresholds(probs, labels, per_class=True)


def test_thresholds_are_tuned_under_the_at_least_one_rule_they_serve_under():
    """The instruction approach names the most probable label where none reaches its threshold: thresholds tuned
    as if such rows named nothing serve a lower F1 than the ones tuned under the rule (here the best of the grid)."""
    import itertools

    from hf_clf_ext.labels import decide

    rng = np.random.default_rng(22)
    which = rng.integers(0, 3, 40)  # label 0, label 1, or both
    positive = np.stack([which != 1, which != 0], axis=1)
    probs = np.where(positive, rng.uniform(0.15, 0.75, (40, 2)), rng.uniform(0.0, 0.45, (40, 2)))
    grid = [0.2, 0.4, 0.6, 0.8]

    def served(thresholds, average="macro"):
        hits = decide(probs, True, thresholds, at_least_one=True)
        return f1_score(positive.astype(int), hits, average=average, zero_division=0)

    best = max(served(list(pair)) for pair in itertools.product(grid, grid))
    assert served(tune_thresholds(probs, positive, True, grid, at_least_one=True)) == pytest.approx(best)
    assert served(tune_thresholds(probs, positive, True, grid)) < best - 0.02
    one = tune_thresholds(probs, positive, False, grid, at_least_one=True)
    assert served([one, one], "micro") == pytest.approx(max(served([t, t], "micro") for t in grid))
