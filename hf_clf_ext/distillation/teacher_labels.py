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

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from ..texts import normalize_texts

DEFAULT_MAX_CHARS = 100_000
# What defines a saved classifier in its folder (its top level and its adapter subfolder; checkpoints, logs and
# students distilled into a subfolder are not the teacher): configs, weights, adapters, tokenizer files, remote code,
# prompt, verbalizer and TF-IDF settings. Run records are left out, so that re-evaluating a teacher does not make it
# another teacher.
TEACHER_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model", ".py", ".jinja",
                         ".tiktoken", ".txt")
NOT_TEACHER_FILES = ("training_args.bin", "trainer_state.json", "all_results.json")
_CHUNK = 1 << 20


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


def teacher_fingerprint(teacher) -> str:
    """The teacher's identity by content: `files:<sha256>` of the files defining a local folder (streamed, names and
    bytes), `hub:<repo>@<commit>` of a Hub snapshot, or `weights:<sha256>` of the loaded weights and settings of a
    teacher with neither (built in Python)."""
    name = getattr(teacher, "name_or_path", None)
    if name is not None and os.path.isdir(name):
        return f"files:{folder_fingerprint(name)}"
    commit = _hub_commit(teacher, str(name)) if name is not None else None
    if commit is not None:
        return f"hub:{name}@{commit}"
    return f"weights:{_loaded_fingerprint(teacher)}"


def teacher_files(folder: str | os.PathLike) -> list[str]:
    """The files that define the classifier saved in `folder`, sorted, as paths relative to it: those at its top
    level and in the subfolder where a last-token save keeps its adapter (config.json's `adapter_subfolder`)."""
    from ..last_token.modeling_last_token import ADAPTER_SUBFOLDER

    def model_files(subfolder: str) -> list[str]:
        path = os.path.join(folder, subfolder)
        return [os.path.join(subfolder, name) if subfolder else name for name in sorted(os.listdir(path))
                if name.endswith(TEACHER_FILE_SUFFIXES) and name not in NOT_TEACHER_FILES
                and not name.endswith("_results.json") and os.path.isfile(os.path.join(path, name))]

    subfolders = {ADAPTER_SUBFOLDER}
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as file:
            named = json.load(file).get("adapter_subfolder")
        if isinstance(named, str) and named:
            subfolders.add(os.path.normpath(named))
    except (OSError, ValueError, AttributeError):
        pass
    names = model_files("")
    for subfolder in sorted(subfolders):
        if os.path.isdir(os.path.join(folder, subfolder)):
            names += model_files(subfolder)
    return names


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the names and bytes of `teacher_files(folder)`, read in 1 MiB chunks (weights never load)."""
    digest = hashlib.sha256()
    for name in teacher_files(folder):
        digest.update(name.replace(os.sep, "/").encode("utf-8") + b"\0")
        content = hashlib.sha256()
        with open(os.path.join(folder, name), "rb") as file:
            while chunk := file.read(_CHUNK):
                content.update(chunk)
        digest.update(content.digest())
    return digest.hexdigest()


def _hub_commit(teacher, name: str) -> str | None:
    """The commit of the Hub snapshot a teacher loaded from: its model config's, else that of the snapshot holding
    its settings file (resolved as the loader resolves it)."""
    from transformers.utils import CONFIG_NAME, cached_file
    from transformers.utils.hub import extract_commit_hash

    from ..instruction.classifier import PROMPT_FILE
    from .tfidf import SETTINGS_FILE

    approach = getattr(teacher, "approach", None)
    if approach == "last_token":  # config.json and the weights come from the same snapshot
        commit = getattr(getattr(getattr(teacher, "model", None), "config", None), "_commit_hash", None)
        if commit:
            return commit
    marker = {"instruction": PROMPT_FILE, "tfidf": SETTINGS_FILE}.get(approach, CONFIG_NAME)
    try:
        path = cached_file(name, marker, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None
    return extract_commit_hash(path, None)


def _loaded_fingerprint(teacher) -> str:
    """sha256 of a loaded teacher's labels, settings and weights (for a teacher that no folder or snapshot names)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(teacher.labels), teacher.multi_label, getattr(teacher, "thresholds", None)],
                             default=str).encode("utf-8"))
    approach = getattr(teacher, "approach", None)
    if approach == "tfidf":
        model = teacher.model
        digest.update(json.dumps([model.temperature, model.decision_thresholds, sorted(
            (term, int(i)) for term, i in model.vectorizer.vocabulary_.items())]).encode("utf-8"))
        for array in (model.coef, model.intercept, model.vectorizer.idf_):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        return digest.hexdigest()
    if approach == "instruction":
        instruction = teacher.instruction
        model = instruction.model
        digest.update(json.dumps([vars(instruction.prompt), instruction.max_length], default=str).encode("utf-8"))
    else:
        model = getattr(teacher, "model", None)
    if model is None or not hasattr(model, "state_dict"):
        raise ValueError("The teacher names no folder or Hub repo (name_or_path) and holds no model whose weights "
                         "identify it: load it with TextClassifier.from_pretrained.")
    config = getattr(model, "config", None)
    if hasattr(config, "to_json_string"):
        digest.update(config.to_json_string().encode("utf-8"))
    import torch

    for key, tensor in model.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}:{tensor.dtype}:{tensor.numel()}".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
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
    header = {"teacher": getattr(teacher, "name_or_path", None), "teacher_fingerprint": teacher_fingerprint(teacher),
              "labels": names, "multi_label": teacher.multi_label, "method": method or teacher.methods[0],
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
            bad = [i for i, p in chunk.items() if not _probabilities(p, len(names))]
            if bad:  # NaN would be written (as non-standard JSON) and trained on
                raise ValueError(f"The teacher gave probabilities that are not finite numbers in [0, 1] for pool rows "
                                 f"{sorted(bad)[:10]}, e.g. {chunk[bad[0]]}: check its dtype (float16 overflows) "
                                 "and weights.")
            done.update(chunk)
            if path is not None:
                _append(path, chunk)
            bar.update(len(rows))
    return np.array([done[i] for i in range(len(texts))], dtype=np.float64)


# The keys of a header a file must match, worded for the error (a teacher's path is informative only).
_COMPARED = {"teacher_fingerprint": "teacher (its files or weights)", "labels": "labels",
             "multi_label": "multi_label", "method": "method", "texts": "texts", "fingerprint": "fingerprint"}


def _probabilities(p, size: int) -> bool:
    return isinstance(p, list) and len(p) == size and all(
        isinstance(x, (int, float)) and np.isfinite(x) and -1e-6 <= x <= 1 + 1e-6 for x in p)


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
    differs = [words for key, words in _COMPARED.items() if saved.get(key) != header[key]]
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
        index = row.get("index") if isinstance(row, dict) else None
        if (not isinstance(index, int) or not 0 <= index < header["texts"]
                or not _probabilities(row.get("probabilities"), len(header["labels"]))):
            raise ValueError(f"{path}, line {number}, is not a row of teacher probabilities for these texts: the file "
                             "is damaged; remove it.")
        done[index] = row["probabilities"]
    if cut:  # keep only complete rows, so that appends follow a clean line; replaced whole, never half-written
        temporary = f"{path}.tmp"
        _write_header(temporary, header)
        _append(temporary, done)
        os.replace(temporary, path)
    return done
