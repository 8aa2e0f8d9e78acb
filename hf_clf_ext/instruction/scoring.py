"""Label scoring: probabilities of each label from the model's next-token distributions along its answer.

Each prompt is encoded once (the opening all prompts share, once per call: `SharedPrefix`). Single-label scores are a
softmax over the labels' answer likelihoods: the probability of the label's tokens, times that of a stop token after
them where the label is the start of a longer one (so that `pos` and `positive` are told apart). Labels of one token
each, none the start of another, need no pass beyond the prompt's; otherwise one pass reads the longer labels' tokens.

Multi-label scores follow greedy constrained decoding label by label, in batches: at each step the answers decoding
allows (a label after the last one named, or, once one is named, the stop token) are renormalised among themselves,
and a label's score is the probability that it is named next at the last step where it could be. Decoding names at
least one label, so the first step offers no stop.

Label tokens are fed after the prompts' cache as one sequence per prompt whose attention mask lets each label see the
prompt and its own earlier tokens only ("tree attention"), and the cache is cut back afterwards: memory stays near
one prompt's cache whatever the number of labels. Where a custom mask cannot express the model's attention (flash
attention, recurrent or convolutional layers, a sliding window shorter than the sequence, PEFT prompt learning,
ALiBi biases built from a 2D mask), the cache is repeated per label instead.
"""

import copy
from collections.abc import Sequence

import numpy as np
import torch

from .prompt_cache import (
    SharedPrefix,
    attention_window,
    carries_state,
    is_prompt_learning,
    last_logits_only,
    repeat_rows,
)
from .verbalizer import LabelTokens

TOKEN_CHUNK = 256  # label tokens fed per prompt and forward pass (bounds the logits tensor for large label sets)
LABEL_CHUNK = 32  # labels per pass where the cache is repeated per label (bounds the copies)
TREE_ATTENTION = ("sdpa", "eager")  # attention implementations that take a custom 4D mask
# Families whose attention bias is built from the 2D padding mask (ALiBi), which a custom 4D mask bypasses.
NO_TREE_FAMILIES = ("bloom", "falcon", "mpt")


@torch.no_grad()
def score_labels(
    model, prompt_ids: Sequence[Sequence[int]], tokens: LabelTokens, *, pad_token_id: int, batch_size: int = 8
) -> np.ndarray:
    """`(n, num_labels)` label probabilities for tokenized prompts (ending where the answer starts).

    Single-label rows sum to 1. Multi-label entries are per-label probabilities in [0, 1] (see the module docstring).
    """
    if not len(prompt_ids):
        return np.zeros((0, len(tokens.first)))
    was_training = model.training
    model.eval()
    try:
        shared = SharedPrefix.encode(model, prompt_ids, extra_tokens=tokens.max_answer_length)
        prefixes = _is_prefix(tokens)
        rows = []
        for start in range(0, len(prompt_ids), batch_size):
            batch = prompt_ids[start : start + batch_size]
            cache, last, mask = _encode(model, batch, pad_token_id, shared)
            if tokens.multi_label:
                rows.append(_multi_label_scores(model, cache, last, mask, tokens, pad_token_id))
            else:
                rows.append(_single_label_logprobs(model, cache, last, mask, tokens, prefixes, pad_token_id).exp())
        return torch.cat(rows).numpy()
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
    """`(batch, num_labels)` log-probabilities: a log-softmax over the labels' answer log-likelihoods, a label that
    starts a longer one followed by any stop token."""
    stops = sorted(set(tokens.stop))
    answers, owners = [], []
    for i, ids in enumerate(tokens.first):
        ends = [[stop] for stop in stops] if prefixes[i] else [[]]
        answers += [list(ids) + end for end in ends]
        owners += [i] * len(ends)
    logp = _answer_logprobs(model, cache, last_logprobs, mask, answers, pad_token_id)
    return _group_logsumexp(logp, torch.tensor(owners, device=logp.device), len(tokens.first)).log_softmax(-1).cpu()


def _log_normalizer(logits, rows: int = 32) -> torch.Tensor:
    """`logsumexp` over the vocabulary in float32 (bf16 logits would round it by up to 0.1 nats), a few positions at
    a time so that no float32 copy of the whole logits tensor is made."""
    return torch.cat([logits[:, start : start + rows].float().logsumexp(-1)
                      for start in range(0, logits.shape[1], rows)], dim=1)


def _picks(logits, normalizer, positions: list[int], targets: list[int]) -> torch.Tensor:
    """`(batch, k)` log-probabilities of `targets[j]` in the distribution at `positions[j]`."""
    device = logits.device
    positions_t = torch.tensor(positions, device=device)
    return logits[:, positions_t, torch.tensor(targets, device=device)].float() - normalizer[:, positions_t]


def _chunks(lengths: list[int], tree: bool) -> list[list[int]]:
    """Indices of `lengths` grouped into passes: at most `TOKEN_CHUNK` tokens a pass, and at most `LABEL_CHUNK`
    sequences where the cache is repeated per sequence."""
    chunks, current, used = [], [], 0
    for index, length in enumerate(lengths):
        if current and (used + length > TOKEN_CHUNK or (not tree and len(current) >= LABEL_CHUNK)):
            chunks.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    return chunks + [current] if current else chunks


def _tree_attention(model, cache, mask) -> bool:
    """Whether label sequences can be fed side by side after the prompts under a custom 4D mask (see the module
    docstring), for passes of up to `TOKEN_CHUNK` tokens after the `mask`'s slots."""
    config = model.config.get_text_config()
    window = attention_window(model)
    return (
        getattr(config, "_attn_implementation", None) in TREE_ATTENTION
        and config.model_type not in NO_TREE_FAMILIES
        and not is_prompt_learning(model)
        and not carries_state(cache)
        and (window is None or mask.shape[1] + TOKEN_CHUNK < window)
    )


def _continue(model, cache, mask, sequences: list[list[int]], pad_token_id: int, tree: bool):
    """Logits `(batch, positions, vocab)` after each token of each sequence, fed right after every encoded prompt,
    and the position each sequence starts at. The cache is left as it was."""
    if tree:
        return _continue_as_tree(model, cache, mask, sequences)
    device, batch, count = mask.device, mask.shape[0], len(sequences)
    width = max(len(ids) for ids in sequences)
    seq = torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids in sequences], device=device)
    seq_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences], device=device)
    repeated = copy.deepcopy(cache)
    repeat_rows(repeated, torch.arange(batch, device=device).repeat_interleave(count))
    attention = torch.cat([mask.repeat_interleave(count, 0), seq_mask.repeat(batch, 1)], dim=1)
    positions = mask.sum(-1).repeat_interleave(count)[:, None] + torch.arange(width, device=device)
    logits = model(input_ids=seq.repeat(batch, 1), attention_mask=attention, position_ids=positions,
                   cache=repeated).logits
    return logits.view(batch, count * width, -1), [j * width for j in range(count)]


def _continue_as_tree(model, cache, mask, sequences: list[list[int]]):
    """All sequences in one row per prompt: token `k` of sequence `j` attends to the prompt and to tokens `0..k` of
    sequence `j`, at the positions it would have alone. The cache is cut back to the prompt afterwards."""
    device, batch = mask.device, mask.shape[0]
    owner = torch.tensor([j for j, ids in enumerate(sequences) for _ in ids], device=device)
    depth = torch.tensor([k for ids in sequences for k in range(len(ids))], device=device)
    own = (owner[:, None] == owner[None, :]) & (depth[None, :] <= depth[:, None])
    allowed = torch.cat([mask.bool()[:, None, :].expand(-1, len(owner), -1), own.expand(batch, -1, -1)], dim=-1)
    if model.config.get_text_config()._attn_implementation == "eager":  # eager attention adds the mask
        allowed = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    input_ids = torch.tensor([[token for ids in sequences for token in ids]], device=device).expand(batch, -1)
    positions = mask.sum(-1, keepdim=True) + depth[None, :]
    try:
        logits = model(input_ids=input_ids, attention_mask=allowed[:, None], position_ids=positions, cache=cache,
                       use_cache=True).logits
    finally:
        cache.crop(-len(owner))
    starts = np.cumsum([0] + [len(ids) for ids in sequences[:-1]]).tolist()
    return logits, starts


def _answer_logprobs(model, cache, last_logprobs, mask, answers: list[list[int]], pad_token_id: int) -> torch.Tensor:
    """`(batch, len(answers))` total log-probabilities of each token sequence right after each encoded prompt (the
    cache is kept)."""
    total = last_logprobs[:, [ids[0] for ids in answers]]
    longer = [j for j, ids in enumerate(answers) if len(ids) > 1]
    tree = _tree_attention(model, cache, mask)
    for chunk in _chunks([len(answers[j]) - 1 for j in longer], tree):
        chosen = [longer[k] for k in chunk]
        logits, starts = _continue(model, cache, mask, [answers[j][:-1] for j in chosen], pad_token_id, tree)
        columns, positions, targets = [], [], []
        for j, start in zip(chosen, starts):
            for depth, token in enumerate(answers[j][1:]):
                columns.append(j), positions.append(start + depth), targets.append(token)
        picked = _picks(logits, _log_normalizer(logits), positions, targets)
        total.index_add_(1, torch.tensor(columns, device=total.device), picked)
    return total


def _multi_label_scores(model, cache, last, mask, tokens: LabelTokens, pad_token_id: int) -> torch.Tensor:
    """`(batch, num_labels)`: follow greedy constrained decoding label by label for every prompt of the batch,
    growing one cache; at each step the allowed answers are renormalised among themselves (see the module
    docstring). Rows that finish leave the batch."""
    num_labels = len(tokens.first)
    limit = tokens.max_labels or num_labels
    device = mask.device
    scores = torch.zeros(mask.shape[0], num_labels)
    rows = list(range(mask.shape[0]))  # the prompts still decoding, in cache order
    chosen: dict[int, list[int]] = {row: [] for row in rows}
    step = 0
    stops = sorted(set(tokens.stop))
    while rows:
        lead = list(tokens.delimiter) if step else []
        pieces = tokens.after_delimiter if step else tokens.first
        # A label counts as named when its tokens are followed by what decoding allows after it: a stop token, or
        # the delimiter where another label may follow.
        answers, owners = [], []
        for i in range(num_labels):
            ends = ([tokens.delimiter[0]] if step + 1 < limit and i < num_labels - 1 else []) + stops
            answers += [lead + list(pieces[i]) + [end] for end in ends]
            owners += [i] * len(ends)
        answers += [[stop] for stop in stops]
        owners += [num_labels] * len(stops)
        logp = _answer_logprobs(model, cache, last, mask, answers, pad_token_id)
        options = _group_logsumexp(logp, torch.tensor(owners, device=logp.device), num_labels + 1)
        allowed = torch.zeros_like(options, dtype=torch.bool)
        for position, row in enumerate(rows):
            allowed[position, (chosen[row][-1] + 1 if chosen[row] else 0) : num_labels] = True
        allowed[:, num_labels] = step > 0  # decoding names at least one label
        probabilities = options.masked_fill(~allowed, float("-inf")).softmax(-1).cpu()
        best = probabilities.argmax(-1).tolist()
        keep, extension = [], []
        for position, row in enumerate(rows):
            candidates = allowed[position, :num_labels].nonzero().squeeze(-1).cpu()
            scores[row, candidates] = probabilities[position, candidates]
            if best[position] == num_labels:
                continue  # the stop token beat every label
            chosen[row].append(best[position])
            if len(chosen[row]) < limit and best[position] < num_labels - 1:
                keep.append(position)
                extension.append(lead + list(pieces[best[position]]))
        rows = [rows[position] for position in keep]
        if rows:
            index = torch.tensor(keep, device=device)
            repeat_rows(cache, index)
            last, mask = _extend(model, cache, mask[index], extension, pad_token_id)
        step += 1
    return scores


def _group_logsumexp(values: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """`(rows, count)`: the logsumexp of each row's `values` whose column belongs to each group."""
    member = groups[None, :] == torch.arange(count, device=values.device)[:, None]  # (count, columns)
    return values[:, None, :].masked_fill(~member, float("-inf")).logsumexp(-1)


def _extend(model, cache, mask, new_ids: list[list[int]], pad_token_id: int):
    """Feed each row's `new_ids` (right-padded to a common width, the pads masked) after its cached sequence,
    growing the cache in place; return the log-probs after each row's last new token and the grown mask."""
    device = mask.device
    width = max(len(ids) for ids in new_ids)
    ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in new_ids], device=device)
    new_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in new_ids], device=device,
                            dtype=mask.dtype)
    positions = mask.sum(-1, keepdim=True) + torch.arange(width, device=device)
    mask = torch.cat([mask, new_mask], dim=1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
    ends = torch.tensor([len(row) - 1 for row in new_ids], device=device)
    return logits[torch.arange(len(new_ids), device=device), ends].float().log_softmax(-1), mask
