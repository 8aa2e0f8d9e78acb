"""Training from a stream: a `datasets.IterableDataset` (a Hub dataset with `streaming=True`, or a local JSON Lines /
Parquet / CSV file read lazily) trains the last-token classifier without ever being held whole.

- The label space comes from `labels=` (only the first row is read, for the labels' kind) or from one pass over the
  stream that keeps the label column alone.
- Rows are turned into text, normalised, tokenised and their labels encoded as the trainer reads them
  (`IterableDataset.map`), by the same functions as in-memory data (`texts.row_text`, `texts.tokenize_texts`,
  `labels.encode_labels`): a stream and a `Dataset` of the same rows in the same order train the same model.
- What the model card says of the training rows (rows per label, an example of each, token lengths) is counted from
  the batches as they are trained on (`StreamedRows`): 4 bytes a row, not the rows.
"""

import sys
from array import array

import numpy as np


def is_stream(dataset) -> bool:
    """A `datasets.IterableDataset`: read row by row, with no length (nothing to check if datasets never loaded)."""
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(dataset, datasets.IterableDataset)


def any_stream(*datasets) -> bool:
    """Whether any of `datasets` (each a dataset, a dict of them, or None) is a stream."""
    return any(is_stream(dataset) for given in datasets
               for dataset in (given.values() if isinstance(given, dict) else [given]))


def first_row(dataset, split: str = "training") -> dict:
    for row in dataset:
        return row
    raise ValueError(f"The {split} stream is empty.")


def tokenized_stream(dataset, space, tokenizer, args, reserve: int, split: str = "training"):
    """`dataset`'s rows as model inputs (`input_ids`, `attention_mask`, `labels`), computed lazily as they are read;
    a row without text or with a label outside `space` is an error when it is reached, naming it."""
    from .labels import check_columns, encode_labels
    from .texts import row_text, text_template, tokenize_texts

    template, fields = text_template(args.text_columns, args.text_template)
    check_columns(dataset, [*fields, args.label_column], split)

    def encode(batch: dict) -> dict:
        rows = len(batch[args.label_column])
        texts = [row_text({name: batch[name][i] for name in fields}, template, f"A row of the {split} stream")
                 for i in range(rows)]
        empty = [text for text in texts if not text]
        if empty:
            raise ValueError(f"A row of the {split} stream has empty text ({len(empty)} in a batch of {rows}).")
        encoded, _ = tokenize_texts(texts, tokenizer, args.max_length, truncation_side=args.truncation_side,
                                    reserve=reserve)
        labels, _ = encode_labels(batch[args.label_column], space, split=f"{split} stream")
        return {**encoded, "labels": labels}

    mapped = dataset.map(encode, batched=True)
    return mapped.select_columns(["input_ids", "attention_mask", "labels"])


class StreamedRows:
    """The card's facts about streamed training rows, counted from each batch as it is trained on (under several
    processes each counts its own batches; `merge` adds them up)."""

    def __init__(self, num_labels: int, reserve: int):
        self.counts = np.zeros(num_labels, dtype=np.int64)
        self.lengths = array("I")  # token lengths, with the pooling suffix
        self.examples: dict[int, str] = {}
        self.reserve = reserve

    def add(self, inputs: dict, tokenizer) -> None:
        labels = inputs["labels"].detach().cpu().numpy()
        mask = inputs["attention_mask"].detach().cpu().bool()
        ids = inputs["input_ids"].detach().cpu()
        self.lengths.extend(int(n) + self.reserve for n in mask.sum(-1))
        for row, label in enumerate(labels):
            for i in (np.flatnonzero(label) if label.ndim else [int(label)]):
                self.counts[int(i)] += 1
                if int(i) not in self.examples:
                    self.examples[int(i)] = tokenizer.decode(ids[row][mask[row]], skip_special_tokens=True)

    @classmethod
    def combine(cls, parts) -> "StreamedRows":
        """One count of every process's rows (`parts`: what `gather_object` returns, this process's own included)."""
        parts = list(parts)
        total = cls(len(parts[0].counts), parts[0].reserve)
        for part in parts:
            total.counts += part.counts
            total.lengths.extend(part.lengths)
            for i, text in part.examples.items():
                total.examples.setdefault(i, text)
        return total
