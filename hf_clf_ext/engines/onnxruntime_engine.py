"""The `"onnxruntime"` engine: a folder written by `hf_clf_ext.export.export_onnx` (`hf-clf export --format onnx`),
float32 or int8, run by onnxruntime. `TextClassifier.from_pretrained` picks it for such a folder by itself.

    classifier = TextClassifier.from_pretrained("outputs/smollm2-bbc-onnx")
    classifier.classify(["Shares rose after the results."])

Texts are normalised and tokenised here by the folder's tokenizer (which appends the pooling suffix after
truncation), run longest first in batches of similar length padded on the right (as the graph was exported), and the
logits go through `labels.results_from_probabilities` as every engine's do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from ..export import ONNX_FACTS_FILE, ONNX_FILE


def require_onnxruntime():
    """onnxruntime, or an ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("ONNX exports run on onnxruntime, which is not installed: pip install 'hf-clf-ext[onnx]' "
                          "(onnx, onnxscript, onnxruntime).") from None
    return onnxruntime


class OnnxRuntimeEngine:
    """An ONNX export in an onnxruntime `InferenceSession`.

    Attributes:
        folder: the export. facts: its `onnx.json`. session: the onnxruntime session. tokenizer: the export's.
        labels, multi_label, thresholds: as `TextClassifier`'s.
    """

    name = "onnxruntime"

    def __init__(self, folder: str, *, threads: int | None = None, providers: Sequence[str] | None = None,
                 options=None):
        """`options`: an `onnxruntime.SessionOptions` to start from (profiling, graph optimisation level); `threads`
        sets its intra-op threads (default: torch's thread count, so the engines compare like for like)."""
        from transformers import AutoTokenizer

        onnxruntime = require_onnxruntime()

        self.folder = folder
        with open(os.path.join(folder, ONNX_FACTS_FILE), encoding="utf-8") as file:
            self.facts = json.load(file)
        options = options or onnxruntime.SessionOptions()
        if threads is None:
            import torch

            threads = torch.get_num_threads()  # what the torch engine would use: the two compare like for like
        options.intra_op_num_threads = threads
        available = onnxruntime.get_available_providers()
        self.session = onnxruntime.InferenceSession(
            os.path.join(folder, ONNX_FILE), options,
            providers=list(providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                         if p in available]))
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = self.facts["padding_side"]
        self.labels = list(self.facts["labels"])
        self.multi_label = self.facts["activation"] == "sigmoid"
        self.problem_type = "multi_label_classification" if self.multi_label else "single_label_classification"
        self.thresholds = self.facts.get("decision_thresholds") if self.multi_label else None

    def probabilities(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """`(len(texts), num_labels)` probabilities (texts already normalised), in input order."""
        from ..metrics import probabilities_from_logits
        from ..texts import length_sorted_batches

        encoded = self.tokenizer(list(texts), truncation=True)["input_ids"]
        out = np.zeros((len(encoded), len(self.labels)))
        for rows in length_sorted_batches(encoded, batch_size):
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="np")
            logits = self.session.run(["logits"], {"input_ids": batch["input_ids"].astype(np.int64),
                                                   "attention_mask": batch["attention_mask"].astype(np.int64)})[0]
            out[rows] = probabilities_from_logits(logits, self.problem_type)
        return out

    def close(self) -> None:
        """Nothing to stop: the session goes with the classifier."""

