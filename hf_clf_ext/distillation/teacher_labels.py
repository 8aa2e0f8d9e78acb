"""A teacher's probabilities for an unlabelled pool: checked texts, length-sorted batches, a progress bar, and a
JSONL file written as it goes, so that a run stopped halfway (the pool can be large) resumes where it stopped.

    from hf_clf_ext import TextClassifier, label_pool

    teacher = TextClassifier.from_pretrained("outputs/smollm2-135m-bbc-last-token")
    probabilities = label_pool(teacher, texts, "teacher_labels.jsonl")   # (len(texts), num_labels)

The file's first line names the teacher, its labels, the method, a fingerprint of the teacher's content and one of
the texts; a file written for other texts or another teacher is an error, never silently reused. The teacher is
known by its content, not its path: a teacher retrained into the same folder is another teacher (a hash of the files
that define it: config, weights, adapter, tokenizer, prompt and verbalizer, TF-IDF files), and the same files in
another folder are the same teacher. A Hub teacher is known by the commit of its snapshot. Texts are normalised
(`hf_clf_ext.texts.normalize_text`) before they are fingerprinted and classified, as training normalises them.
"""

import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from ..batch import check_engine_processes, engine_facts, process_state, run_in_parts
from ..fingerprints import classifier_fingerprint, fingerprint
from ..texts import normalize_texts

DEFAULT_MAX_CHARS = 100_000


def check_pool_texts(texts: Sequence, max_chars: int = DEFAULT_MAX_CHARS, what: str = "pool") -> list[str]:
    """The texts as a list, or a ValueError naming the rows that are not strings, are empty, or are longer than
    `max_chars` characters (usually a broken row: a whole file in one cell)."""
    from ..texts import check_texts

    texts = normalize_texts(check_texts(texts))  # as training texts are; the fingerprint is of these
    if not texts:
        raise ValueError(f"The {what} holds no texts.")
    long = [i for i, text in enumerate(texts) if len(text) > max_chars]
    if long:
        shown = ", ".join(f"row {i} ({len(texts[i]):,} characters)" for i in long[:10])
        raise ValueError(
            f"The {what} has {len(long)} text{'s' * (len(long) > 1)} over {max_chars:,} characters: {shown}. "
            "Fix or drop them, or raise max_pool_chars if they are real texts (the teacher reads only their first "
            "max_length tokens)."
        )
    return texts


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
    its only method with probabilities). Texts run in chunks of `chunk_size` consecutive texts (default 8 batches),
    longest first inside each, on the batch-prediction engine (`hf_clf_ext.batch.run_in_parts`): with `path`, the
    chunks are shared out across the processes of an `accelerate launch` (every process labels, every process gets
    the whole array), a stopped run resumes at the chunks it had not finished, and `path` ends up holding the header
    line and one row per text. Without `path`, this process labels every text."""
    texts = check_pool_texts(texts, max_chars)
    method = method or ("score" if teacher.approach == "instruction" else None)
    if not teacher.gives_probabilities(method):
        raise ValueError(f"The teacher's method {method!r} names labels without probabilities; use method='score'.")
    names = list(teacher.labels)
    header = {"teacher": getattr(teacher, "name_or_path", None),
              "teacher_fingerprint": classifier_fingerprint(teacher),
              "labels": names, "multi_label": teacher.multi_label, "method": method or teacher.methods[0],
              "texts": len(texts), "fingerprint": fingerprint(texts), **engine_facts(teacher)}
    done = _read(path, header) if path is not None and os.path.exists(path) else {}  # a file of an earlier version
    if len(done) == len(texts):
        return np.array([done[i] for i in range(len(texts))], dtype=np.float64)

    def classify_chunk(chunk):
        todo = [(i, text) for i, text in chunk if i not in done]
        results = teacher.classify([text for _, text in todo], method=method, batch_size=batch_size) if todo else []
        rows = {i: [float(result["probabilities"][name]) for name in names] for (i, _), result in zip(todo, results)}
        bad = [i for i, p in rows.items() if not _probabilities(p, len(names))]
        if bad:  # NaN would be written (as non-standard JSON) and trained on
            raise ValueError(f"The teacher gave probabilities that are not finite numbers in [0, 1] for pool rows "
                             f"{sorted(bad)[:10]}, e.g. {rows[bad[0]]}: check its dtype (float16 overflows) and "
                             "weights.")
        return [json.dumps({"index": i, "probabilities": done[i] if i in done else rows[i]}) for i, _ in chunk]

    if path is not None:
        check_engine_processes(teacher.engine_name, process_state().num_processes)
    with tempfile.TemporaryDirectory() as scratch:
        output = str(path) if path is not None else os.path.join(scratch, "labels.jsonl")
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        run_in_parts(lambda: enumerate(texts), classify_chunk, f"{output}.parts", header, output, total=len(texts),
                     chunk_size=chunk_size or 8 * batch_size, first_line=json.dumps(header), progress=progress,
                     description=description, processes=None if path is not None else (0, 1))
        done = _read(output, header)
    return np.array([done[i] for i in range(len(texts))], dtype=np.float64)


# The keys of a header a file must match, worded for the error (a teacher's path is informative only).
_COMPARED = {"teacher_fingerprint": "teacher (its files or weights)", "labels": "labels",
             "multi_label": "multi_label", "method": "method", "texts": "texts", "fingerprint": "fingerprint",
             "engine": "engine"}


def _probabilities(p, size: int) -> bool:
    return isinstance(p, list) and len(p) == size and all(
        isinstance(x, (int, float)) and np.isfinite(x) and -1e-6 <= x <= 1 + 1e-6 for x in p)


def _read(path, header: dict) -> dict[int, list[float]]:
    """Rows labelled in `path`. Earlier versions appended to it as they went: a last line cut short by a crash there is
    dropped (and relabelled)."""
    with open(path, encoding="utf-8") as file:
        lines = file.read().split("\n")
    try:
        saved = json.loads(lines[0])
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise ValueError(f"{path} is not a teacher-labels file: remove it or choose another teacher_labels_file.")
    differs = [words for key, words in _COMPARED.items() if saved.get(key) != header.get(key)]
    if differs:
        raise ValueError(
            f"{path} holds teacher labels for other {', '.join(differs)} than this run's; remove it to relabel, or "
            "choose another teacher_labels_file."
        )
    done = {}
    rows = lines[1:]
    for number, line in enumerate(rows, start=2):
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(rows) + 1:
                break  # the partial last line of an interrupted run
            raise ValueError(f"{path}, line {number}, is not valid JSON: the file is damaged; remove it.") from None
        index = row.get("index") if isinstance(row, dict) else None
        if (not isinstance(index, int) or not 0 <= index < header["texts"]
                or not _probabilities(row.get("probabilities"), len(header["labels"]))):
            raise ValueError(f"{path}, line {number}, is not a row of teacher probabilities for these texts: the file "
                             "is damaged; remove it.")
        done[index] = row["probabilities"]
    return done
