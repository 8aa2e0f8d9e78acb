"""From raw (text, label) rows to model inputs: label spaces, text templates, truncation with a pooling suffix.

Every check here fails loudly with the column, row or label at fault: a classifier silently trained on a shifted
label map or on empty texts is worse than no classifier.
"""

import logging
import os
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import ClassLabel, Dataset, Sequence as SequenceFeature
from transformers import AutoTokenizer
from transformers.utils.quantization_config import QuantizationMethod

from .texts import normalize_text

logger = logging.getLogger(__name__)


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
        return "multi_label_classification" if self.multi_label else "single_label_classification"


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
    feature = dataset.features[column]
    if isinstance(feature, SequenceFeature):
        feature = feature.feature
    if isinstance(feature, list) and feature:
        feature = feature[0]
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def check_columns(dataset: Dataset, columns: Sequence[str], split: str = "training") -> None:
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The {split} data has no column {', '.join(map(repr, missing))}; its columns are {dataset.column_names}."
        )


def label_values(dataset: Dataset, column: str, split: str = "training") -> list:
    """The label column, with `ClassLabel` ids replaced by their names: each split is decoded with its own
    feature, so splits whose `ClassLabel`s list the names in different orders still agree."""
    check_columns(dataset, [column], split)
    values = list(dataset[column])
    names = _class_label_names(dataset, column)
    if names is None:
        return values
    return [[names[i] for i in value] if isinstance(value, (list, tuple)) else names[value] for value in values]


def build_label_space(dataset: Dataset, label_column: str, labels: Sequence[str] | None = None) -> LabelSpace:
    """Infer the label space from the training data: names from string labels (sorted) or a `ClassLabel` feature
    (its order), or `labels` (id order) for bare integer ids; lists of labels mean multi-label."""
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
    if set(names) - seen:
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
            raise ValueError(f"Class id {item} in the {split} data is outside 0..{len(labels) - 1} of labels {labels}.")
        return labels[item]

    named = [[name(item) for item in value] if isinstance(value, (list, tuple)) else name(value)
             for value in dataset[column]]
    return dataset.remove_columns(column).add_column(column, named)


def encode_split(
    dataset: Dataset, label_column: str, space: LabelSpace, *, drop_unknown: bool = False, split: str = "evaluation"
) -> tuple[Dataset, list]:
    """The rows kept (all, unless `drop_unknown` drops rows with labels unseen in training) and their encoded labels."""
    encoded, dropped = encode_labels(
        label_values(dataset, label_column, split), space, drop_unknown=drop_unknown and split != "training", split=split
    )
    if dropped and len(dropped) == len(dataset):
        raise ValueError(
            f"All {len(dataset)} rows of the {split} data were dropped: none carries a label among "
            f"{list(space.names)}. Check the label column {label_column!r} and the labels the model was trained on."
        )
    if dropped:
        dataset = dataset.select(sorted(set(range(len(dataset))) - set(dropped)))
    return dataset, encoded


def template_fields(template: str) -> list[str]:
    """The column names a `str.format` template refers to (`"{title}\\n\\n{abstract}"` -> title, abstract)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def build_texts(dataset: Dataset, text_columns: Sequence[str], template: str | None, split: str) -> list[str]:
    """One string per row: the single text column, or several columns joined by `template` (default: blank lines
    between them), each field and the whole normalised by `texts.normalize_text` (as every inference path
    normalises). Empty texts are an error naming the rows."""
    if template is None:
        template = "\n\n".join("{" + column + "}" for column in text_columns)
    fields = template_fields(template)
    if not fields:
        raise ValueError(f"The text template {template!r} refers to no column: use e.g. '{{text}}'.")
    check_columns(dataset, fields, split)
    columns = {name: dataset[name] for name in fields}
    texts = []
    for row in range(len(dataset)):
        values = {name: columns[name][row] for name in fields}
        bad = [name for name, value in values.items() if not isinstance(value, str)]
        if bad:
            raise ValueError(f"Row {row} of the {split} data has non-text values in {bad}: {values}.")
        texts.append(normalize_text(template.format(**{name: normalize_text(value) for name, value in values.items()})))
    empty = [row for row, text in enumerate(texts) if not text]
    if empty:
        raise ValueError(f"Rows {empty[:20]} of the {split} data have empty text ({len(empty)} in all).")
    return texts


def load_tokenizer(model, gguf_file: str | None = None):
    """The tokenizer saved with `model` (a name, a path or a loaded model), for a trainer given none."""
    if getattr(model, "quantization_method", None) == QuantizationMethod.GGUF:
        raise ValueError("Pass the tokenizer as processing_class: a model loaded from a GGUF file does not say which "
                         "file its tokenizer is in.")
    source = model if isinstance(model, (str, os.PathLike)) else model.name_or_path
    return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)


def tokenize_texts(
    texts: Sequence[str],
    tokenizer,
    max_length: int,
    *,
    truncation_side: str = "right",
    reserve: int = 0,
) -> tuple[dict[str, list[list[int]]], int]:
    """Token ids of `texts` (and how many were cut), each at most `max_length - reserve` tokens (`reserve` leaves room
    for the pooling suffix the model appends). The tokenizer truncates itself, keeping the special tokens it adds at
    the start, the end or both (BOS, an appended EOS), so training cuts exactly as `tokenizer(text, truncation=True)`
    does in `predict_texts` and `pipeline()`. `truncation_side="right"` keeps the start of a long text, `"left"` its
    end."""
    if truncation_side not in ("right", "left"):
        raise ValueError(f"truncation_side must be 'right' (keep the start) or 'left' (keep the end), got {truncation_side!r}.")
    special = tokenizer.num_special_tokens_to_add(pair=False)
    room = max_length - reserve
    if room - special < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text after {special} special and {reserve} suffix tokens."
        )
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    truncated = sum(length > room - special for length in lengths)
    if truncated:
        logger.info("%d of %d texts are longer than %d tokens and were truncated.", truncated, len(texts), room - special)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = truncation_side
    try:
        input_ids = tokenizer(texts, truncation=True, max_length=room, verbose=False)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}, truncated
