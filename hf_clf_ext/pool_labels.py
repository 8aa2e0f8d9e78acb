"""A teacher's probabilities for an unlabelled pool: checked texts, length-sorted batches, a progress bar, and a
JSONL file written as it goes, so that a run stopped halfway (the pool can be large) resumes where it stopped.

    from hf_clf_ext import TextClassifier, label_pool

    teacher = TextClassifier.from_pretrained("outputs/smollm2-135m-bbc-last-token")
    probabilities = label_pool(teacher, texts, "teacher_labels.jsonl")   # (len(texts), num_labels)

The file's first line names the teacher, its labels, the method and a fingerprint of the texts; a file written for
other texts or another teacher is an error, never silently reused.
"""

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

DEFAULT_MAX_CHARS = 100_000


def check_pool_texts(texts: Sequence, max_chars: int = DEFAULT_MAX_CHARS, what: str = "pool") -> list[str]:
    """The texts as a list, or a ValueError naming the rows that are not strings, are empty, or are longer than
    `max_chars` characters (usually a broken row: a whole file in one cell)."""
    from .inference import check_texts

    texts = check_texts(texts)
    if not texts:
        raise ValueError(f"The {what} holds no texts.")
    long = [i for i, text in enumerate(texts) if len(text) > max_chars]
    if long:
        shown = ", ".join(f"row {i} ({len(texts[i]):,} characters)" for i in long[:10])
        raise ValueError(
            f"The {what} has {len(long)} text{'s' * (len(long) > 1)} over {max_chars:,} characters: {shown}. Fix or drop them, or raise "
            "max_pool_chars if they are real texts (the teacher reads only their first max_length tokens)."
        )
    return texts


def fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def label_pool(
    teacher,
    texts: Sequence[str],
    path: str | os.PathLike | None = None,
    *,
    method: str | None = None,
    batch_size: int = 16,
    chunk_size: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    progress: bool = True,
    description: str = "teacher labels",
) -> np.ndarray:
    """`(len(texts), num_labels)` teacher probabilities (softmax rows, or per-label probabilities when multi-label).

    `teacher`: a `TextClassifier` (either approach; an instruction classifier through label scoring, `method="score"`,
    its only method with probabilities). Texts run longest first in chunks of `chunk_size` (default 8 batches); each
    chunk is appended to `path` as soon as it is done, and rows already in `path` are not classified again."""
    texts = check_pool_texts(texts, max_chars)
    method = method or ("score" if teacher.approach == "instruction" else None)
    if not teacher.gives_probabilities(method):
        raise ValueError(f"The teacher's method {method!r} names labels without probabilities; use method='score'.")
    names = list(teacher.labels)
    header = {"teacher": getattr(teacher, "name_or_path", None), "labels": names, "multi_label": teacher.multi_label, "method": method or teacher.methods[0],
              "texts": len(texts), "fingerprint": fingerprint(texts)}
    done = _read(path, header) if path is not None and os.path.exists(path) else {}
    if path is not None and not done:
        _write_header(path, header)
    order = [i for i in sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True) if i not in done]
    chunk_size = chunk_size or 8 * batch_size
    from tqdm.auto import tqdm

    with tqdm(total=len(texts), initial=len(done), desc=description, unit="text", disable=not progress) as bar:
        for start in range(0, len(order), chunk_size):
            rows = order[start : start + chunk_size]
            results = teacher.classify([texts[i] for i in rows], method=method, batch_size=batch_size)
            chunk = {i: [float(result["probabilities"][name]) for name in names] for i, result in zip(rows, results)}
            done.update(chunk)
            if path is not None:
                _append(path, chunk)
            bar.update(len(rows))
    return np.array([done[i] for i in range(len(texts))], dtype=np.float64)


def _write_header(path, header: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps(header) + "\n")


def _append(path, chunk: dict[int, list[float]]) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.writelines(json.dumps({"index": i, "probabilities": p}) + "\n" for i, p in chunk.items())
        file.flush()
        os.fsync(file.fileno())


def _read(path, header: dict) -> dict[int, list[float]]:
    """Rows already labelled in `path`; a last line cut short by a crash is dropped (and relabelled)."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().split("\n")
    try:
        saved = json.loads(lines[0])
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise ValueError(f"{path} is not a teacher-labels file: remove it or choose another teacher_labels_file.")
    differs = [key for key in header if saved.get(key) != header[key]]
    if differs:
        raise ValueError(
            f"{path} holds teacher labels for other {', '.join(differs)} than this run's; remove it to relabel, or "
            "choose another teacher_labels_file."
        )
    done, cut = {}, False
    rows = lines[1:]
    for number, line in enumerate(rows, start=2):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(rows) + 1:
                cut = True  # the partial last line of an interrupted run
                break
            raise ValueError(f"{path}, line {number}, is not valid JSON: the file is damaged; remove it.") from None
        done[int(row["index"])] = row["probabilities"]
    if cut:  # keep only complete rows, so that appends follow a clean line
        _write_header(path, header)
        _append(path, done)
    return done
