"""The cheapest student: TF-IDF features and logistic regression, trained on a teacher's soft targets.

Soft targets are fitted exactly, not rounded to labels: each row enters the multinomial (or, multi-label, per-label
binary) logistic loss once per class, weighted by that class's target probability, which is the cross-entropy
against the target distribution. Saved as JSON (settings, vocabulary, labels) plus safetensors (idf, weights): no
pickle, so a folder from the Hub loads without running its code.

Texts go through `hf_clf_ext.texts.normalize_text` when fitted and when classified, as they do everywhere else, so
`"  text \n"` and `"text"` are the same text to a student. Two classes (single-label) keep two rows of weights,
`[0, w]` and `[0, b]`: scikit-learn's binary model stores one row `w` (the logit of the second class against the
first), and softmax over `[0, w.x + b]` is its sigmoid.
"""

import json
import math
import os
from collections.abc import Sequence

import numpy as np

from ..texts import normalize_texts

SETTINGS_FILE = "tfidf_classifier.json"
WEIGHTS_FILE = "tfidf_classifier.safetensors"


class TfidfClassifier:
    """TF-IDF (word n-grams, sublinear tf) + logistic regression over `labels`.

    `temperature` divides the logits (fitted on validation data, as for the other classifiers); `decision_thresholds`
    (multi-label) decide which labels are named."""

    def __init__(self, labels: Sequence[str], multi_label: bool, vectorizer, coef: np.ndarray, intercept: np.ndarray,
                 temperature: float = 1.0, decision_thresholds: Sequence[float] | None = None):
        self.labels, self.multi_label, self.vectorizer = [str(name) for name in labels], multi_label, vectorizer
        if not self.labels or (not multi_label and len(self.labels) < 2):
            raise ValueError(f"A {'multi' if multi_label else 'single'}-label classifier needs at least "
                             f"{1 if multi_label else 2} labels, got {self.labels}.")
        coef, intercept = np.atleast_2d(np.asarray(coef, dtype=np.float64)), np.atleast_1d(
            np.asarray(intercept, dtype=np.float64))
        if not multi_label and len(self.labels) == 2 and coef.shape[0] == 1 and intercept.shape == (1,):
            # scikit-learn's binary model: one row, the second class's logit against the first's (fixed at 0).
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        if coef.shape[0] != len(self.labels) or intercept.shape != (len(self.labels),):
            raise ValueError(f"coef {coef.shape} and intercept {intercept.shape} need one row per label "
                             f"({len(self.labels)}).")
        self.coef, self.intercept = coef, intercept
        self.temperature = temperature  # checked: a positive finite number
        self.decision_thresholds = list(decision_thresholds) if decision_thresholds is not None else None

    @classmethod
    def fit(cls, texts: Sequence[str], targets, labels: Sequence[str], multi_label: bool, *, ngram_max: int = 2,
            sublinear_tf: bool = True, min_df: int = 1, C: float = 10.0, balanced: bool = False,
            sample_weight=None, seed: int = 0) -> "TfidfClassifier":
        """Fit on `targets`, an `(n, num_labels)` array of probabilities (one-hot rows for gold labels).

        `balanced` (multi-label) weighs each label's positives and negatives by their inverse total target mass, as
        scikit-learn's `class_weight="balanced"` does with hard labels."""
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        targets = np.asarray(targets, dtype=np.float64)
        texts = normalize_texts(texts)  # as `logits` sees them
        if targets.shape != (len(texts), len(labels)):
            raise ValueError(f"targets must have shape ({len(texts)}, {len(labels)}), got {targets.shape}.")
        bad = np.flatnonzero(~(np.isfinite(targets) & (targets >= 0) & (targets <= 1)).all(axis=1))
        if bad.size:
            raise ValueError(f"targets must be probabilities in [0, 1]; rows {bad[:10].tolist()} are not "
                             f"({bad.size} in all).")
        if not multi_label and len(labels) < 2:
            raise ValueError(f"A single-label classifier needs at least 2 labels, got {list(labels)}.")
        weight = np.ones(len(texts)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weight.shape != (len(texts),) or not (np.isfinite(weight) & (weight >= 0)).all():
            raise ValueError(f"sample_weight must hold {len(texts)} finite non-negative weights.")
        vectorizer = TfidfVectorizer(sublinear_tf=sublinear_tf, ngram_range=(1, ngram_max), min_df=min_df)
        features = vectorizer.fit_transform(texts)
        if multi_label:
            coef, intercept = np.zeros((len(labels), features.shape[1])), np.zeros(len(labels))
            stacked = sparse.vstack([features, features]).tocsr()
            outcome = np.r_[np.ones(len(texts)), np.zeros(len(texts))]
            for j in range(len(labels)):
                positive, negative = targets[:, j] * weight, (1 - targets[:, j]) * weight
                if balanced and positive.sum() > 0 and negative.sum() > 0:
                    total = positive.sum() + negative.sum()
                    positive, negative = (positive * total / (2 * positive.sum()),
                                          negative * total / (2 * negative.sum()))
                model = LogisticRegression(C=C, max_iter=5000, random_state=seed)
                model.fit(stacked, outcome, sample_weight=np.r_[positive, negative] + 1e-12)
                coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        else:
            keep = targets > 0  # one entry per (row, class) with target mass
            rows, classes = np.nonzero(keep)
            if len(set(classes.tolist())) < len(labels):
                missing = sorted(set(range(len(labels))) - set(classes.tolist()))
                raise ValueError(f"No training target puts any probability on {[labels[i] for i in missing]}.")
            model = LogisticRegression(C=C, max_iter=5000, random_state=seed)
            model.fit(features[rows], classes, sample_weight=targets[rows, classes] * weight[rows])
            coef, intercept = model.coef_, model.intercept_  # one row for two classes: expanded by __init__
        return cls(labels, multi_label, vectorizer, coef, intercept)

    # --- inference ---------------------------------------------------------------------------------------------------

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, num_labels)` logits, divided by the temperature (texts normalised as in training)."""
        features = self.vectorizer.transform(normalize_texts(texts))
        return np.asarray(features @ self.coef.T + self.intercept) / self.temperature

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        from scipy.special import expit

        z = self.logits(texts)
        if self.multi_label:
            return expit(z)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def classify(self, texts: Sequence[str], batch_size: int = 16) -> list[dict]:
        """Results in the format of `classify_texts` (`batch_size` is accepted for the shared interface)."""
        from ..labels import results_from_probabilities
        from ..texts import check_texts

        return results_from_probabilities(self.predict_proba(check_texts(texts)), self.labels, self.multi_label,
                                          self.decision_thresholds)

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value) -> None:
        self._temperature = _check_temperature(value)

    @property
    def num_parameters(self) -> int:
        """Weights and biases (the idf vector is a fixed statistic, not counted; nor is the zero row that stands for
        the first of two classes)."""
        size = int(self.coef.size + self.intercept.size)
        binary = not self.multi_label and len(self.labels) == 2 and not self.coef[0].any() and self.intercept[0] == 0
        return size // 2 if binary else size

    # --- saving ------------------------------------------------------------------------------------------------------

    def save_pretrained(self, output_dir: str | os.PathLike) -> None:
        from safetensors.numpy import save_file

        os.makedirs(output_dir, exist_ok=True)
        vectorizer = self.vectorizer
        settings = {
            "labels": self.labels,
            "multi_label": self.multi_label,
            "temperature": self.temperature,
            "decision_thresholds": self.decision_thresholds,
            "ngram_range": list(vectorizer.ngram_range),
            "sublinear_tf": vectorizer.sublinear_tf,
            "lowercase": vectorizer.lowercase,
            "token_pattern": vectorizer.token_pattern,
            "vocabulary": {term: int(i) for term, i in vectorizer.vocabulary_.items()},
        }
        with open(os.path.join(output_dir, SETTINGS_FILE), "w", encoding="utf-8") as file:
            json.dump(settings, file, ensure_ascii=False)
        tensors = {"idf": vectorizer.idf_, "coef": self.coef, "intercept": self.intercept}
        save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()},  # raw bytes, C order
                  os.path.join(output_dir, WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **hub) -> "TfidfClassifier":
        """A folder or Hub repo written by `save_pretrained` (`hub`: `revision`, `cache_dir`, `token`, ...)."""
        from safetensors.numpy import load_file
        from sklearn.feature_extraction.text import TfidfVectorizer
        from transformers.utils import cached_file

        with open(cached_file(str(name_or_path), SETTINGS_FILE, **hub), encoding="utf-8") as file:
            settings = json.load(file)
        weights = load_file(cached_file(str(name_or_path), WEIGHTS_FILE, **hub))
        vectorizer = TfidfVectorizer(
            vocabulary=settings["vocabulary"], ngram_range=tuple(settings["ngram_range"]),
            sublinear_tf=settings["sublinear_tf"], lowercase=settings["lowercase"],
            token_pattern=settings["token_pattern"],
        )
        vectorizer.idf_ = weights["idf"]
        return cls(settings["labels"], settings["multi_label"], vectorizer, weights["coef"], weights["intercept"],
                   settings["temperature"], settings["decision_thresholds"])


def _check_temperature(temperature) -> float:
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}.")
    return temperature
