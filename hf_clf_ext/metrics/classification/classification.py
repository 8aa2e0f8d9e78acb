"""Classification metrics (accuracy, precision/recall/F1 averages, per-class F1) as a local `evaluate` module.

Self-contained on purpose: `evaluate.load` copies this file alone into its modules cache, so it may import installed
libraries only, never sibling files of the package.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support

_DESCRIPTION = """
Accuracy, precision, recall and F1 (micro, macro and weighted averages) and the F1 of every class, computed with
scikit-learn with `zero_division=0`. Config `"single_label"` takes one class id per example; config `"multi_label"`
takes multi-hot vectors and adds `subset_accuracy` (exact match) and `hamming_loss`. Passing `num_labels` makes
classes absent from both predictions and references count (with F1 0) in the macro average.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`): predicted class ids (`"single_label"`) or multi-hot vectors
        (`"multi_label"`).
    references (`list[int]` or `list[list[int]]`): gold labels, in the same form as `predictions`.
    num_labels (`int`, *optional*): number of classes; defaults to `len(label_names)`, else the width of the
        multi-hot vectors, else the largest class id seen plus one.
    label_names (`list[str]`, *optional*): class names in label-id order; adds one `f1_<name>` entry per class.
Returns:
    accuracy (`float`): fraction of correct examples (for `"multi_label"`, exact match, as in scikit-learn).
    precision_micro, precision_macro, precision_weighted (`float`)
    recall_micro, recall_macro, recall_weighted (`float`)
    f1_micro, f1_macro, f1_weighted (`float`)
    f1_per_class (`list[float]`): F1 of each class in label-id order.
    f1_<name> (`float`): F1 of the class called `<name>`, only with `label_names`.
    subset_accuracy, hamming_loss (`float`): `"multi_label"` only.
Examples:
    >>> metric = evaluate.load("hf_clf_ext/metrics/classification", "single_label")
    >>> metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], label_names=["a", "b", "c"])["f1_b"]
    0.6666666666666666
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_FEATURES = {
    "single_label": datasets.Features(
        {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
    ),
    "multi_label": datasets.Features(
        {
            "predictions": datasets.Sequence(datasets.Value("int64")),
            "references": datasets.Sequence(datasets.Value("int64")),
        }
    ),
}
_AVERAGES = ("micro", "macro", "weighted")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    """Single- and multi-label classification scores, one module so both problem types report the same keys."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in _FEATURES:
            raise ValueError(f"config_name must be one of {list(_FEATURES)}, got {self.config_name!r}.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES[self.config_name],
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(
        self,
        predictions: list,
        references: list,
        num_labels: int | None = None,
        label_names: list[str] | None = None,
    ) -> dict:
        multi_label = self.config_name == "multi_label"
        y_pred, y_true = np.asarray(predictions, dtype=np.int64), np.asarray(references, dtype=np.int64)
        if y_true.size == 0:
            raise ValueError("No examples: predictions and references are empty.")
        if y_pred.shape != y_true.shape:
            raise ValueError(f"predictions {y_pred.shape} and references {y_true.shape} differ in shape.")
        num_labels = _num_labels(y_true, y_pred, multi_label, num_labels, label_names)
        labels = list(range(num_labels))

        results = {"accuracy": float(accuracy_score(y_true, y_pred))}
        for average in _AVERAGES:
            precision, recall, f1, _ = precision_recall_fscore_support(
                y_true, y_pred, labels=labels, average=average, zero_division=0
            )
            results |= {f"precision_{average}": float(precision), f"recall_{average}": float(recall)}
            results[f"f1_{average}"] = float(f1)
        per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        results["f1_per_class"] = [float(value) for value in per_class]
        if label_names is not None:
            keys = [f"f1_{name}" for name in label_names]
            clashes = sorted(set(keys) & set(results))
            if clashes or len(set(keys)) != len(keys):
                raise ValueError(f"label_names must be unique and not clash with summary keys, got {label_names}.")
            results |= dict(zip(keys, results["f1_per_class"]))
        if multi_label:
            results["subset_accuracy"] = results["accuracy"]
            results["hamming_loss"] = float(hamming_loss(y_true, y_pred))
        return results


def _num_labels(
    y_true: np.ndarray, y_pred: np.ndarray, multi_label: bool, num_labels: int | None, label_names: list[str] | None
) -> int:
    """Resolve and check the class count, so out-of-range ids fail loudly instead of being silently dropped."""
    if label_names is not None:
        if num_labels is not None and num_labels != len(label_names):
            raise ValueError(f"num_labels={num_labels} but {len(label_names)} label_names were given.")
        num_labels = len(label_names)
    if multi_label:
        if y_true.ndim != 2:
            raise ValueError(f"multi_label expects multi-hot vectors of equal length, got shape {y_true.shape}.")
        if not np.isin(y_true, (0, 1)).all() or not np.isin(y_pred, (0, 1)).all():
            raise ValueError("multi_label predictions and references must be multi-hot (only 0 and 1).")
        if num_labels is not None and num_labels != y_true.shape[1]:
            raise ValueError(f"num_labels={num_labels} but the multi-hot vectors have {y_true.shape[1]} entries.")
        return y_true.shape[1]
    if min(y_true.min(), y_pred.min()) < 0:
        raise ValueError("Class ids must be non-negative.")
    seen = int(max(y_true.max(), y_pred.max())) + 1
    if num_labels is None:
        return seen
    if seen > num_labels:
        raise ValueError(f"Class id {seen - 1} is out of range for num_labels={num_labels}.")
    return num_labels
