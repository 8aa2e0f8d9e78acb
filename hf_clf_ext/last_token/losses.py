"""Losses of the last-token classifier's training beyond the model's own cross-entropy / BCE: balanced class
weights for imbalanced data, and the focal loss. Kept apart from the trainer, which only picks them by `args`."""

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..labels import LabelSpace


def balanced_class_weights(labels: Sequence, space: LabelSpace) -> list[float]:
    """Single-label: n / (C * count_c) (scikit-learn's "balanced"); multi-label: negatives / positives per class
    (BCE `pos_weight`). A class absent from training (or, multi-label, present in every row) gets weight 1."""
    targets = np.asarray(labels)
    if space.multi_label:
        positives = targets.sum(axis=0)
        negatives = len(targets) - positives
        weights = np.where((positives > 0) & (negatives > 0), negatives / np.maximum(positives, 1), 1.0)
    else:
        counts = np.bincount(targets, minlength=len(space.names))
        weights = np.where(counts > 0, len(targets) / (len(space.names) * np.maximum(counts, 1)), 1.0)
    return [float(w) for w in weights]


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool, gamma: float, weights=None):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, down-weighting easy examples."""
    if multi_label:
        targets = labels.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights, reduction="none")
        p_true = torch.where(targets > 0.5, logits.sigmoid(), 1 - logits.sigmoid())
        return ((1 - p_true) ** gamma * bce).mean()
    log_p = logits.log_softmax(dim=-1).gather(1, labels.long().unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if weights is not None:
        w = weights[labels.long()]
        return (w * loss).sum() / w.sum()
    return loss.mean()
