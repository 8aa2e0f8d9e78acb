"""Predictions for raw texts: batches of similar length (sorted by token count), labels and probabilities."""

import logging
from collections.abc import Sequence

import torch

from .compiled import compile_pays, compiled_forward
from ..labels import results_from_probabilities
from ..texts import check_batch_size, check_texts, length_sorted_batches

logger = logging.getLogger(__name__)


def classify_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                  compile: bool | None = None) -> list[dict]:
    """Classify `texts` with a last-token classifier (plain or wrapped by PEFT) or its stock export.

    Texts are tokenized once, truncated to `tokenizer.model_max_length` (the trainer sets it to the training
    length minus the pooling suffix), and run longest first in batches of similar length, so little compute goes to
    padding. `compile=True` runs them through the model's `torch.compile`d forward over bucketed shapes (see
    `hf_clf_ext.last_token.compiled`); `None` compiles where that pays (long jobs on hardware where it was measured to
    help). Returns, in input order, `{"label", "score", "probabilities"}` (single-label) or
    `{"labels", "probabilities"}` (multi-label, using the config's tuned `decision_thresholds`, else 0.5).
    """
    texts = check_texts(texts)  # normalised as training normalised them
    check_batch_size(batch_size)
    if not texts:
        return []
    if tokenizer.pad_token_id is None:
        raise ValueError("The tokenizer has no pad token: set tokenizer.pad_token (e.g. to its eos token).")
    config = model.config
    names = [config.id2label[i] for i in range(len(config.id2label))]
    multi_label = config.problem_type == "multi_label_classification"
    thresholds = getattr(config, "decision_thresholds", None)  # none in a stock export
    encoded = tokenizer(texts, truncation=True)["input_ids"]
    device = next(model.parameters()).device
    if compile is None:
        compile = compile_pays(model, len(texts))
    compiled = compiled_forward(model) if compile else None
    results: list[dict | None] = [None] * len(texts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for rows in length_sorted_batches(encoded, batch_size):
                ids = [encoded[i] for i in rows]
                # The compiled forward meets few shapes: lengths padded up to its buckets (on the tokenizer's side).
                padding = {} if compiled is None else {
                    "padding": "max_length", "max_length": compiled.bucket_length(max(map(len, ids)))}
                batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt", **padding)
                batch = {key: value.to(device) for key, value in batch.items()}
                if compiled is None:
                    logits = model(**batch).logits.float().cpu()
                else:
                    logits = compiled(batch["input_ids"], batch["attention_mask"], rows=batch_size)
                probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
                for row, result in zip(rows, results_from_probabilities(probabilities.numpy(), names, multi_label,
                                                                        thresholds)):
                    results[row] = result
    finally:
        model.train(was_training)
    if compiled is not None:
        logger.info("%s", compiled.stats)
    return results


def __getattr__(name: str):
    if name == "predict_texts":  # the round-2 name, from this module's path
        from .. import _deprecated

        _deprecated(f"{__name__}.predict_texts", f"{__name__}.classify_texts")
        globals()[name] = classify_texts  # warned once
        return classify_texts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

