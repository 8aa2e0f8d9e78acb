"""Labels: the label space of a task, labels read and encoded split by split, and (`decide`) the one place where
probabilities and thresholds become the labels a classifier names.

Every check here fails loudly with the column, row or label at fault: a classifier silently trained on a shifted
label map or on empty texts is worse than no classifier.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .streaming import first_row, is_stream

if TYPE_CHECKING:  # datasets loads only where data is read: prediction imports this module too
    from datasets import Dataset

logger = logging.getLogger(__name__)

# The model config (last_token/configuration_last_token.py) keeps its own copy: it must import nothing of the package.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


@dataclass(frozen=True)
class LabelSpace:
    """The ordered class names of a task and whether an example may carry several of them.

    `from_ids`: the training labels were bare class ids (named by `labels=`), so other splits may use ids too.
    Otherwise every split is read by name (`ClassLabel` ids through their own feature's names).
    """

    names: tuple[str, ...]
    multi_label: bool
    from_ids: bool = False

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def problem_type(self) -> str:
        return PROBLEM_TYPES[self.multi_label]


def _kind(value) -> str:
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _class_label_names(dataset: Dataset, column: str) -> list[str] | None:
    from datasets import ClassLabel, Sequence as SequenceFeature

    if dataset.features is None or column not in dataset.features:  # a stream whose features are not known
        return None
    feature = dataset.features[column]
    if isinstance(feature, SequenceFeature):
        feature = feature.feature
    if isinstance(feature, list) and feature:
        feature = feature[0]
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def check_columns(dataset: Dataset, columns: Sequence[str], split: str = "training") -> None:
    names = dataset.column_names
    if names is None and is_stream(dataset):  # a stream that does not know its features: its first row does
        names = list(first_row(dataset, split))
    missing = [column for column in columns if column not in names]
    if missing:
        raise ValueError(f"The {split} data has no column {', '.join(map(repr, missing))}; its columns are {names}.")


def label_values(dataset: Dataset, column: str, split: str = "training") -> list:
    """The label column, with `ClassLabel` ids replaced by their names: each split is decoded with its own
    feature, so splits whose `ClassLabel`s list the names in different orders still agree."""
    check_columns(dataset, [column], split)
    # A stream is read once, keeping this column alone.
    values = [row[column] for row in dataset] if is_stream(dataset) else list(dataset[column])
    names = _class_label_names(dataset, column)
    if names is None:
        return values
    return [[names[i] for i in value] if isinstance(value, (list, tuple)) else names[value] for value in values]


def build_label_space(dataset: Dataset, label_column: str, labels: Sequence[str] | None = None) -> LabelSpace:
    """Infer the label space from the training data: names from string labels (sorted) or a `ClassLabel` feature
    (its order), or `labels` (id order) for bare integer ids; lists of labels mean multi-label. A stream given
    `labels` is not read through: its first row tells the labels' kind, and a label outside them is an error when
    training reaches it."""
    kind_only = labels is not None and is_stream(dataset)
    if kind_only:
        check_columns(dataset, [label_column])
        values = [first_row(dataset)[label_column]]
    else:
        values = label_values(dataset, label_column)
    kinds = Counter(_kind(value) for value in values)
    if len(kinds) != 1 or next(iter(kinds)) not in ("str", "int", "list"):
        raise ValueError(
            f"The label column {label_column!r} mixes or has unsupported types ({dict(kinds)}): use label names "
            "(str), class ids (int) or, for multi-label, lists of names or ids."
        )
    multi_label = "list" in kinds
    flat = [item for value in values for item in value] if multi_label else values
    item_kinds = {_kind(item) for item in flat}
    if len(item_kinds) > 1 or not item_kinds <= {"str", "int"}:
        raise ValueError(f"The label lists in {label_column!r} mix types {sorted(item_kinds)}: use names or ids.")
    from_ids = item_kinds == {"int"}
    if from_ids and labels is None:
        raise ValueError(
            f"The label column {label_column!r} holds class ids: give their names with `labels=[...]` (id order)."
        )
    names = list(labels) if labels is not None else _class_label_names(dataset, label_column) or sorted(set(flat))
    names = [str(name) for name in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate label names: {names}.")
    if len(names) < 2:
        raise ValueError(f"A classifier needs at least two classes; the label column {label_column!r} has {names}.")
    if from_ids and flat and (min(flat) < 0 or max(flat) >= len(names)):
        raise ValueError(f"Class ids in {label_column!r} must be in 0..{len(names) - 1} for labels {names}.")
    seen = {names[i] for i in flat} if from_ids else set(flat)
    if seen - set(names):
        raise ValueError(f"Labels {sorted(seen - set(names))} in the training data are not among {names}.")
    if set(names) - seen and not kind_only:
        logger.warning("Labels %s never occur in the training data.", sorted(set(names) - seen))
    return LabelSpace(names=tuple(names), multi_label=multi_label, from_ids=from_ids)


def encode_labels(
    values: Sequence, space: LabelSpace, *, drop_unknown: bool = False, split: str = "evaluation"
) -> tuple[list, list[int]]:
    """Class ids (single-label) or multi-hot float lists (multi-label), plus the row indices that were dropped
    because they carry a label outside `space` (only with `drop_unknown=True`; otherwise that is an error)."""
    label2id = space.label2id
    encoded, dropped, unknown = [], [], Counter()

    def to_id(item):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"Label {item!r} in the {split} data is neither a name nor a class id.")
        if isinstance(item, int):
            if not space.from_ids:
                raise ValueError(
                    f"Label {item} in the {split} data is a class id, but this label space knows its classes by name "
                    f"{list(space.names)}: name the ids in id order (labels=[...]; `hf-clf evaluate --labels ...`), "
                    "or use names or a ClassLabel feature, so that ids cannot be read in the wrong order."
                )
            return item if 0 <= item < len(space.names) else None
        return label2id.get(item)

    for row, value in enumerate(values):
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) != space.multi_label:
            raise ValueError(
                f"Row {row} of the {split} data has label {value!r}, but the task is "
                + ("multi-label (a list of labels per row)." if space.multi_label else "single-label (one label).")
            )
        ids = [to_id(item) for item in items]
        if None in ids:
            unknown.update(str(item) for item, i in zip(items, ids) if i is None)
            dropped.append(row)
            continue
        if space.multi_label:
            hot = [0.0] * len(space.names)
            for i in ids:
                hot[i] = 1.0
            encoded.append(hot)
        else:
            encoded.append(ids[0])
    if unknown:
        message = (
            f"{len(dropped)} rows of the {split} data carry labels never seen in training "
            f"{dict(unknown)}; known labels are {list(space.names)}"
        )
        if not drop_unknown:
            raise ValueError(message + ". Fix the data, or pass drop_unknown_labels=True to drop those rows.")
        logger.warning("%s: dropped them.", message)
    return encoded, dropped


def name_class_ids(dataset: Dataset, column: str, labels: Sequence[str], space: LabelSpace,
                   split: str = "evaluation") -> Dataset:
    """`dataset` with the bare class ids of `column` replaced by `labels[id]` (names in id order), so that data
    labelled by ids evaluates a model that knows its classes by name; each name must be one of `space`'s."""
    labels = [str(name) for name in labels]
    unknown = sorted(set(labels) - set(space.names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {list(space.names)}.")

    def name(item):
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"labels names class ids, but the {split} data's {column!r} holds {item!r}.")
        if not 0 <= item < len(labels):
            raise ValueError(f"Class id {item} in the {split} data is outside 0..{len(labels) - 1} of labels "
                             f"{labels}.")
        return labels[item]

    named = [[name(item) for item in value] if isinstance(value, (list, tuple)) else name(value)
             for value in dataset[column]]
    return dataset.remove_columns(column).add_column(column, named)


def encode_split(
    dataset: Dataset, label_column: str, space: LabelSpace, *, drop_unknown: bool = False, split: str = "evaluation"
) -> tuple[Dataset, list]:
    """The rows kept (all, unless `drop_unknown` drops rows with labels unseen in training) and their encoded
    labels."""
    encoded, dropped = encode_labels(
        label_values(dataset, label_column, split), space, drop_unknown=drop_unknown and split != "training",
        split=split
    )
    if dropped and len(dropped) == len(dataset):
        raise ValueError(
            f"All {len(dataset)} rows of the {split} data were dropped: none carries a label among "
            f"{list(space.names)}. Check the label column {label_column!r} and the labels the model was trained on."
        )
    if dropped:
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(dropped)))
    return dataset, encoded


# --- decisions: the one place where probabilities become the labels a classifier names -----------------------------


def decision_thresholds(thresholds, num_labels: int) -> np.ndarray:
    """One threshold per label, as floats: `thresholds` (one number for every label, or one per label, each in
    [0, 1]), or 0.5 for every label when None."""
    limits = np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64)
    if limits.ndim == 0:
        limits = np.full(num_labels, float(limits))
    if limits.shape != (num_labels,):
        raise ValueError(f"Decision thresholds are one number or one per label ({num_labels}), got {thresholds}.")
    if not ((limits >= 0) & (limits <= 1)).all():
        raise ValueError(f"Decision thresholds must lie in [0, 1], got {thresholds}.")
    return limits


def decide(probabilities, multi_label: bool, thresholds=None, *, at_least_one: bool = False) -> np.ndarray:
    """What `(n, num_labels)` probabilities name: single-label, the argmax class ids `(n,)`; multi-label, `(n,
    num_labels)` 0/1, each label at or above its threshold (`decision_thresholds`). `at_least_one` names the most
    probable label where none reaches its threshold: the instruction approach's rule, because constrained decoding
    cannot answer with no label; a last-token head may name none."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (examples, labels), got shape {p.shape}.")
    if not multi_label:
        return p.argmax(axis=1)
    hits = p >= decision_thresholds(thresholds, p.shape[1])
    if at_least_one:
        empty = ~hits.any(axis=1)
        hits[empty] = p[empty] == p[empty].max(axis=1, keepdims=True)
    return hits.astype(np.int64)


def results_from_probabilities(probabilities, names: Sequence[str], multi_label: bool, thresholds=None, *,
                               at_least_one: bool = False) -> list[dict]:
    """The result format of every classifier, from its probabilities: `{"label", "score", "probabilities"}`, or
    multi-label `{"labels", "probabilities"}` naming what `decide` names."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(names))
    decided = decide(p, multi_label, thresholds, at_least_one=at_least_one)
    results = []
    for row, choice in zip(p, decided):
        scores = dict(zip(names, row.tolist()))
        if multi_label:
            results.append({"labels": [n for n, hit in zip(names, choice) if hit], "probabilities": scores})
        else:
            results.append({"label": names[int(choice)], "score": float(row[int(choice)]), "probabilities": scores})
    return results
