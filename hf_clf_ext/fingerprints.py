"""What identifies a saved classifier and a set of texts, by content: resumable jobs (teacher labels, batch
prediction) compare these before they reuse a file, so that a file written by another model or for other texts is
an error, never silently reused.

A classifier is known by its content, not its path: one retrained into the same folder is another classifier (a hash
of the files that define it: config, weights, adapter, tokenizer, prompt and verbalizer, TF-IDF files), and the same
files in another folder are the same classifier. A Hub classifier is known by the commit of its snapshot.
"""

import hashlib
import json
import os
from collections.abc import Iterable

import numpy as np

# What defines a saved classifier in its folder (its top level and its adapter subfolder; checkpoints, logs and
# students distilled into a subfolder are not the classifier): configs, weights, adapters, tokenizer files, remote
# code, prompt, verbalizer and TF-IDF settings. Run records are left out, so that re-evaluating a classifier does not
# make it another one.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model", ".py", ".jinja",
                         ".tiktoken", ".txt", ".onnx", ".onnx.data")
NOT_MODEL_FILES = ("training_args.bin", "trainer_state.json", "all_results.json")
_CHUNK = 1 << 20


def fingerprint(texts: Iterable[str]) -> str:
    """sha256 of the texts in order (each followed by a NUL byte), streamed."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


def classifier_fingerprint(classifier) -> str:
    """The classifier's identity by content: `files:<sha256>` of the files defining a local folder (streamed, names and
    bytes), `hub:<repo>@<commit>` of a Hub snapshot, or `weights:<sha256>` of the loaded weights and settings of a
    classifier with neither (built in Python)."""
    name = getattr(classifier, "name_or_path", None)
    if name is not None and os.path.isdir(name):
        return f"files:{folder_fingerprint(name)}"
    commit = _hub_commit(classifier, str(name)) if name is not None else None
    if commit is not None:
        return f"hub:{name}@{commit}"
    return f"weights:{_loaded_fingerprint(classifier)}"


def classifier_files(folder: str | os.PathLike) -> list[str]:
    """The files that define the classifier saved in `folder`, sorted, as paths relative to it: those at its top
    level and in the subfolder where a last-token save keeps its adapter (config.json's `adapter_subfolder`)."""
    from .last_token.modeling_last_token import ADAPTER_SUBFOLDER

    def model_files(subfolder: str) -> list[str]:
        path = os.path.join(folder, subfolder)
        return [os.path.join(subfolder, name) if subfolder else name for name in sorted(os.listdir(path))
                if name.endswith(MODEL_FILE_SUFFIXES) and name not in NOT_MODEL_FILES
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
    """sha256 over the names and bytes of `classifier_files(folder)`, read in 1 MiB chunks (weights never load)."""
    digest = hashlib.sha256()
    for name in classifier_files(folder):
        digest.update(name.replace(os.sep, "/").encode("utf-8") + b"\0")
        content = hashlib.sha256()
        with open(os.path.join(folder, name), "rb") as file:
            while chunk := file.read(_CHUNK):
                content.update(chunk)
        digest.update(content.digest())
    return digest.hexdigest()


def _hub_commit(classifier, name: str) -> str | None:
    """The commit of the Hub snapshot a classifier loaded from: its model config's, else that of the snapshot holding
    its settings file (resolved as the loader resolves it)."""
    from transformers.utils import CONFIG_NAME, cached_file
    from transformers.utils.hub import extract_commit_hash

    from .instruction.classifier import PROMPT_FILE
    from .distillation.tfidf import SETTINGS_FILE

    approach = getattr(classifier, "approach", None)
    if approach == "last_token":  # config.json and the weights come from the same snapshot
        commit = getattr(getattr(getattr(classifier, "model", None), "config", None), "_commit_hash", None)
        if commit:
            return commit
    marker = {"instruction": PROMPT_FILE, "tfidf": SETTINGS_FILE}.get(approach, CONFIG_NAME)
    try:
        path = cached_file(name, marker, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):
        return None
    return extract_commit_hash(path, None)


def _loaded_fingerprint(classifier) -> str:
    """sha256 of a loaded classifier's labels, settings and weights (for a classifier that no folder or snapshot
    names)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(classifier.labels), classifier.multi_label,
                              getattr(classifier, "thresholds", None)], default=str).encode("utf-8"))
    approach = getattr(classifier, "approach", None)
    if approach == "tfidf":
        model = classifier.model
        digest.update(json.dumps([model.temperature, model.decision_thresholds, sorted(
            (term, int(i)) for term, i in model.vectorizer.vocabulary_.items())]).encode("utf-8"))
        for array in (model.coef, model.intercept, model.vectorizer.idf_):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        return digest.hexdigest()
    if approach == "instruction":
        instruction = classifier.instruction
        model = instruction.model
        digest.update(json.dumps([vars(instruction.prompt), instruction.max_length], default=str).encode("utf-8"))
    else:
        model = getattr(classifier, "model", None)
    if model is None or not hasattr(model, "state_dict"):
        raise ValueError("The classifier names no folder or Hub repo (name_or_path) and holds no model whose weights "
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
