"""The cheapest student: TF-IDF features and logistic regression, trained on a teacher's soft targets.

Soft targets are fitted exactly, not rounded to labels: each row enters the multinomial (or, multi-label, per-label
binary) logistic loss once per class, weighted by that class's target probability, which is the cross-entropy
against the target distribution. Saved as JSON (settings, vocabulary, labels) plus safetensors (idf, weights): no
pickle, so a folder from the Hub loads without running its code.
"""

import json
import os
from collections.abc import Sequence

import numpy as np

SETTINGS_FILE = "tfidf_classifier.json"
WEIGHTS_FILE = "tfidf_classifier.safetensors"


class TfidfClassifier:
    """TF-IDF (word n-grams, sublinear tf) + logistic regression over `labels`.

    `temperature` divides the logits (fitted on validation data, as for the other classifiers); `decision_thresholds`
    (multi-label) decide which labels are named."""

    def __init__(self, labels: Sequence[str], multi_label: bool, vectorizer, coef: np.ndarray, intercept: np.ndarray,
                 temperature: float = 1.0, decision_thresholds: Sequence[float] | None = None):
        self.labels, self.multi_label, self.vectorizer = [str(name) for name in labels], multi_label, vectorizer
        self.coef, self.intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        self.temperature = float(temperature)
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
        texts = list(texts)
        if targets.shape != (len(texts), len(labels)):
            raise ValueError(f"targets must have shape ({len(texts)}, {len(labels)}), got {targets.shape}.")
        weight = np.ones(len(texts)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
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
                    positive, negative = positive * total / (2 * positive.sum()), negative * total / (2 * negative.sum())
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
            coef, intercept = model.coef_, model.intercept_
        return cls(labels, multi_label, vectorizer, coef, intercept)

    # --- inference ---------------------------------------------------------------------------------------------------

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, num_labels)` logits, divided by the temperature."""
        features = self.vectorizer.transform(list(texts))
        return np.asarray(features @ self.coef.T + self.intercept) / self.temperature

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        z = self.logits(texts)
        if self.multi_label:
            return 1 / (1 + np.exp(-z))
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def classify(self, texts: Sequence[str], batch_size: int = 16) -> list[dict]:
        """Results in the format of `predict_texts` (`batch_size` is accepted for the shared interface)."""
        from .inference import check_texts, results_from_probabilities

        return results_from_probabilities(self.predict_proba(check_texts(texts)), self.labels, self.multi_label,
                                          self.decision_thresholds)

    @property
    def num_parameters(self) -> int:
        """Weights and biases (the idf vector is a fixed statistic, not counted)."""
        return int(self.coef.size + self.intercept.size)

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
