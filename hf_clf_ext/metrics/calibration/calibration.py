"""Calibration metrics (ECE, Brier score, ROC AUC, reliability-diagram data) as a local `evaluate` module.

Self-contained on purpose: `evaluate.load` copies this file alone into its modules cache, so it may import installed
libraries only, never sibling files of the package.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """
How well predicted probabilities match observed frequencies. `ece` is the expected calibration error over
`n_bins` equal-width confidence bins (Guo et al., 2017): the bin-size-weighted mean of |accuracy - confidence|.
Config `"single_label"` bins the top-1 probability against whether the top-1 class is right. Config
`"multi_label"` treats every (example, label) pair as a binary prediction (positive when p >= 0.5) with confidence
max(p, 1 - p). `brier` is the mean over examples of the summed squared error against the one-hot target
(`"single_label"`) or the mean squared error over all pairs (`"multi_label"`). `roc_auc` is the macro one-vs-rest
AUC over the classes that have both positive and negative examples; classes without are skipped (an AUC is
undefined for them), and it is None when no class qualifies. With every class present, the single-label value
equals scikit-learn's `roc_auc_score(multi_class="ovr", average="macro")`.
"""

_KWARGS_DESCRIPTION = """
Args:
    probabilities (`list[list[float]]`): (n, C) probabilities; rows sum to 1 for `"single_label"`, independent
        per-label probabilities for `"multi_label"`.
    references (`list[int]` or `list[list[int]]`): gold class ids (`"single_label"`) or multi-hot vectors
        (`"multi_label"`).
    n_bins (`int`, *optional*, defaults to 15): number of equal-width confidence bins on [0, 1].
Returns:
    ece (`float`): expected calibration error.
    brier (`float`): Brier score.
    roc_auc (`float` or `None`): macro AUC over the classes with both outcomes present.
    reliability (`dict`): `bin_edges` (n_bins + 1 floats) and, per bin, `bin_confidence` and `bin_accuracy`
        (None for empty bins) and `bin_count`, all plain lists, for drawing a reliability diagram.
Examples:
    >>> metric = evaluate.load("hf_clf_ext/metrics/calibration", "single_label")
    >>> result = metric.compute(probabilities=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0], n_bins=2)
    >>> round(result["ece"], 4), result["reliability"]["bin_count"]
    (0.35, [0, 2])
"""

_CITATION = """
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={Proceedings of the 34th International Conference on Machine Learning},
  pages={1321--1330},
  year={2017}
}
@article{brier1950verification,
  title={Verification of Forecasts Expressed in Terms of Probability},
  author={Brier, Glenn W.},
  journal={Monthly Weather Review},
  volume={78},
  number={1},
  pages={1--3},
  year={1950}
}
"""

_PROBABILITIES = datasets.Sequence(datasets.Value("float64"))
_FEATURES = {
    "single_label": datasets.Features({"probabilities": _PROBABILITIES, "references": datasets.Value("int64")}),
    "multi_label": datasets.Features(
        {"probabilities": _PROBABILITIES, "references": datasets.Sequence(datasets.Value("int64"))}
    ),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Calibration(evaluate.Metric):
    """Whether the probabilities can be trusted, not only the argmax: needed before thresholding or abstaining."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _FEATURES:
            raise ValueError(f"config_name must be one of {list(_FEATURES)}, got {self.config_name!r}.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES[self.config_name],
            reference_urls=["https://arxiv.org/abs/1706.04599"],
        )

    def _compute(self, probabilities: list, references: list, n_bins: int = 15) -> dict:
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}.")
        probs = _as_probability_matrix(probabilities)
        targets = _as_indicator(references, probs, self.config_name == "multi_label")
        if self.config_name == "multi_label":
            confidence = np.maximum(probs, 1 - probs).ravel()
            correct = ((probs >= 0.5) == targets.astype(bool)).ravel()
            brier = np.mean((probs - targets) ** 2)
        else:
            confidence = probs.max(axis=1)
            correct = probs.argmax(axis=1) == targets.argmax(axis=1)
            brier = np.mean(np.sum((probs - targets) ** 2, axis=1))
        ece, reliability = _binned_calibration(confidence, correct, n_bins)
        return {"ece": ece, "brier": float(brier), "roc_auc": _macro_auc(targets, probs), "reliability": reliability}


def _as_probability_matrix(probabilities: list) -> np.ndarray:
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.size == 0:
        raise ValueError("No examples: probabilities are empty.")
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be an (n, C) matrix with rows of equal length, got shape {probs.shape}.")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probabilities must be finite and within [0, 1].")
    return probs


def _as_indicator(references: list, probs: np.ndarray, multi_label: bool) -> np.ndarray:
    """(n, C) 0/1 targets for both configs, so Brier and AUC share one code path."""
    refs = np.asarray(references, dtype=np.int64)
    n, num_classes = probs.shape
    if multi_label:
        if refs.shape != probs.shape:
            raise ValueError(f"references {refs.shape} and probabilities {probs.shape} differ in shape.")
        if not np.isin(refs, (0, 1)).all():
            raise ValueError("multi_label references must be multi-hot (only 0 and 1).")
        return refs.astype(np.float64)
    if refs.shape != (n,):
        raise ValueError(f"Expected {n} class ids as references, got shape {refs.shape}.")
    if refs.min() < 0 or refs.max() >= num_classes:
        raise ValueError(f"Class ids must lie in [0, {num_classes}), got {refs.min()}..{refs.max()}.")
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("single_label probabilities must sum to 1 per row (apply softmax to the logits).")
    return np.eye(num_classes)[refs]


def _binned_calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[float, dict]:
    """ECE over bins (lo, hi] (the first bin also holds 0), plus the per-bin statistics behind it."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    filled = count > 0
    bin_conf = np.divide(conf_sum, count, out=np.zeros(n_bins), where=filled)
    bin_acc = np.divide(correct_sum, count, out=np.zeros(n_bins), where=filled)
    ece = float(np.sum(count * np.abs(bin_acc - bin_conf)) / len(confidence))
    reliability = {
        "bin_edges": edges.tolist(),
        "bin_confidence": [float(c) if f else None for c, f in zip(bin_conf, filled)],
        "bin_accuracy": [float(a) if f else None for a, f in zip(bin_acc, filled)],
        "bin_count": count.tolist(),
    }
    return ece, reliability


def _macro_auc(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the classes with both outcomes present (others have no defined AUC)."""
    positives = targets.sum(axis=0)
    scorable = (positives > 0) & (positives < len(targets))
    if not scorable.any():
        return None
    return float(np.mean([roc_auc_score(targets[:, c], probs[:, c]) for c in np.flatnonzero(scorable)]))
