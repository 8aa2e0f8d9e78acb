"""Label scoring: probabilities of each label from the model's next-token distributions along its answer.

Each prompt is encoded once (the opening all prompts share, once per call: `SharedPrefix`). Single-label scores are a
softmax over the labels' answer likelihoods: the probability of the label's tokens, times that of a stop token after
them where the label is the start of a longer one (so that `pos` and `positive` are told apart). Labels of one token
each, none the start of another, need no pass beyond the prompt's; otherwise the prompt's KV cache is repeated for
every longer label and one pass reads its tokens. Multi-label scores are per-label: the probability that the model
names label `i` next, after the canonical answer formed by the labels before `i` that greedy constrained decoding
chooses.
"""

import copy
from collections.abc import Sequence

import numpy as np
import torch

from .prompt_cache import SharedPrefix, last_logits_only, repeat_rows
from .verbalizer import LabelTokens

LABEL_CHUNK = 32  # labels scored per forward pass (bounds the logits tensor for large label sets)


@torch.no_grad()
def score_labels(
    model, prompt_ids: Sequence[Sequence[int]], tokens: LabelTokens, *, pad_token_id: int, batch_size: int = 8
) -> np.ndarray:
    """`(n, num_labels)` label probabilities for tokenized prompts (ending where the answer starts).

    Single-label rows sum to 1. Multi-label entries are independent per-label probabilities in [0, 1].
    """
    if not len(prompt_ids):
        return np.zeros((0, len(tokens.first)))
    was_training = model.training
    model.eval()
    try:
        shared = SharedPrefix.encode(model, prompt_ids, extra_tokens=tokens.max_answer_length)
        if not tokens.multi_label:
            prefixes = _is_prefix(tokens)
            rows = []
            for start in range(0, len(prompt_ids), batch_size):
                batch = prompt_ids[start : start + batch_size]
                cache, last, mask = _encode(model, batch, pad_token_id, shared)
                rows.append(_single_label_logprobs(model, cache, last, mask, tokens, prefixes, pad_token_id).exp())
            return torch.cat(rows).numpy()
        return np.stack([_multi_label_scores(model, ids, tokens, pad_token_id, shared) for ids in prompt_ids])
    finally:
        model.train(was_training)


def _encode(model, prompts: Sequence[Sequence[int]], pad_token_id: int, prefix: SharedPrefix):
    """Prompts (which start with `prefix`) through the model once: their cache, last-position log-probs and the
    attention mask over their whole length."""
    inputs = prefix.inputs(prompts, pad_token_id)
    out = model(**inputs, use_cache=True, **last_logits_only(model))
    return out.cache, out.logits[:, -1].float().log_softmax(-1), inputs["attention_mask"]


def _is_prefix(tokens: LabelTokens) -> list[bool]:
    """Per label: whether its tokens are the start of another label's (its answer then needs the stop token)."""
    sequences = [tuple(ids) for ids in tokens.first]
    return [any(len(other) > len(ids) and other[: len(ids)] == ids for other in sequences) for ids in sequences]


def _single_label_logprobs(model, cache, last_logprobs, mask, tokens: LabelTokens, prefixes, pad_token_id: int):
    """`(batch, num_labels)` log-probabilities: a log-softmax over the labels' answer log-likelihoods."""
    stop = sorted(set(tokens.stop))
    total = last_logprobs[:, [ids[0] for ids in tokens.first]]  # summed on the model's device, copied out once
    longer = [i for i, ids in enumerate(tokens.first) if len(ids) > 1 or prefixes[i]]
    batch = mask.shape[0]
    for start in range(0, len(longer), LABEL_CHUNK):
        chunk = longer[start : start + LABEL_CHUNK]
        # A label's last token is read only when a stop token must follow it (labels that start a longer one).
        fed = [list(tokens.first[i]) if prefixes[i] else list(tokens.first[i][:-1]) for i in chunk]
        logits = _continue(model, cache, mask, fed, pad_token_id, consume=start + LABEL_CHUNK >= len(longer)).float()
        logits = logits.view(batch, len(chunk), logits.shape[1], -1)
        normalizer = logits.logsumexp(-1)  # log-probabilities are picks minus this, without a vocab-sized copy
        for column, i in enumerate(chunk):
            ids = tokens.first[i]
            for depth in range(1, len(ids)):  # the distribution after `depth` label tokens
                total[:, i] += logits[:, column, depth - 1, ids[depth]] - normalizer[:, column, depth - 1]
            if prefixes[i]:
                end = len(ids) - 1
                total[:, i] += logits[:, column, end, stop].logsumexp(-1) - normalizer[:, column, end]
    return total.log_softmax(-1).cpu()


def _continue(model, cache, mask, sequences: list[list[int]], pad_token_id: int, consume: bool) -> torch.Tensor:
    """Logits `(batch * len(sequences), width, vocab)` after each token of each sequence, fed right after every
    encoded prompt (prompt-major rows). The cache is repeated in place: it is copied first unless `consume`."""
    device, batch, count = mask.device, mask.shape[0], len(sequences)
    width = max(len(ids) for ids in sequences)
    seq = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in sequences], device=device)
    seq_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences], device=device)
    repeated = cache if consume else copy.deepcopy(cache)
    repeat_rows(repeated, torch.arange(batch).repeat_interleave(count))
    attention = torch.cat([mask.repeat_interleave(count, 0), seq_mask.repeat(batch, 1)], dim=1)
    positions = mask.sum(-1).repeat_interleave(count)[:, None] + torch.arange(width, device=device)
    return model(input_ids=seq.repeat(batch, 1), attention_mask=attention, position_ids=positions,
                 cache=repeated).logits


def _answer_logprobs(model, cache, last_logprobs, mask, answers: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """`(batch, len(answers))` total log-probabilities of each token sequence right after each encoded prompt (the
    cache is kept)."""
    columns = []
    for start in range(0, len(answers), LABEL_CHUNK):
        chunk = answers[start : start + LABEL_CHUNK]
        first = last_logprobs[:, [ids[0] for ids in chunk]]
        width = max(len(ids) for ids in chunk)
        if width == 1:
            columns.append(first)
            continue
        batch, count = mask.shape[0], len(chunk)
        logits = _continue(model, cache, mask, [ids[:-1] for ids in chunk], pad_token_id, consume=False)
        targets = torch.tensor([ids[1:] + [pad_token_id] * (width - len(ids)) for ids in chunk], device=mask.device)
        target_mask = torch.tensor([[1] * (len(ids) - 1) + [0] * (width - len(ids)) for ids in chunk],
                                   device=mask.device)
        logp = logits.float().log_softmax(-1).gather(-1, targets.repeat(batch, 1).unsqueeze(-1)).squeeze(-1)
        rest = (logp * target_mask.repeat(batch, 1)).sum(-1).view(batch, count)
        columns.append(first + rest)
    return torch.cat(columns, dim=1).cpu()


def _multi_label_scores(model, prompt: Sequence[int], tokens: LabelTokens, pad_token_id: int,
                        prefix: SharedPrefix) -> np.ndarray:
    """Follow greedy constrained decoding label by label, reusing one growing cache: at each step every label that
    may come next gets P(it is named next), and decoding stops when the stop token beats every label."""
    num_labels = len(tokens.first)
    limit = tokens.max_labels or num_labels
    scores = np.zeros(num_labels)
    cache, last, mask = _encode(model, [prompt], pad_token_id, prefix)
    chosen: list[int] = []
    while True:
        candidates = [i for i in range(num_labels) if not chosen or i > chosen[-1]]
        lead = list(tokens.delimiter) if chosen else []
        pieces = tokens.after_delimiter if chosen else tokens.first
        # A label counts as named when its tokens are followed by the delimiter or the stop token.
        answers = [lead + list(pieces[i]) + [end] for i in candidates for end in (tokens.delimiter[0], tokens.stop[0])]
        answers.append([tokens.stop[0]])
        logp = _answer_logprobs(model, cache, last, mask, answers, pad_token_id)[0]
        label_logp = torch.logsumexp(logp[:-1].view(len(candidates), 2), dim=-1)
        scores[candidates] = label_logp.exp().numpy()
        best = int(label_logp.argmax())
        if chosen and logp[-1] >= label_logp[best]:
            break
        chosen.append(candidates[best])
        if len(chosen) >= limit or chosen[-1] == num_labels - 1:
            break
        last, mask = _extend(model, cache, mask, lead + list(pieces[chosen[-1]]))
    return scores


def _extend(model, cache, mask, new_ids: list[int]):
    """Feed `new_ids` after the cached sequence (one row), growing the cache in place."""
    device = mask.device
    positions = mask.sum(-1, keepdim=True) + torch.arange(len(new_ids), device=device)
    mask = torch.cat([mask, torch.ones((1, len(new_ids)), dtype=mask.dtype, device=device)], dim=1)
    out = model(input_ids=torch.tensor([new_ids], device=device), attention_mask=mask, position_ids=positions,
                cache=cache, use_cache=True)
    return out.logits[:, -1].float().log_softmax(-1), mask
