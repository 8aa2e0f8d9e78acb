"""A `LogitsProcessor` that lets `generate()` write only valid answers: one label (single-label) or a set of labels
joined by the delimiter in label-id order, each at most once (multi-label), then a stop token.

It works with greedy search, sampling and beam search, left-padded batches and any causal LM: pass it in
`generate(..., logits_processor=LogitsProcessorList([processor]))`. `generate()` runs its own processors
(repetition penalties, banned n-grams and words, minimum lengths) before user ones and its sampling warpers after:
the mask stays authoritative over the former, and the latter only reshape what it allows.
"""

import logging
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

from .verbalizer import LabelTokens

logger = logging.getLogger(__name__)


@dataclass
class _Node:
    children: dict[int, "_Node"] = field(default_factory=dict)
    ends: int | None = None  # the label whose token sequence ends here
    below: set[int] = field(default_factory=set)  # labels whose sequences pass through here
    delimited: int | None = None  # multi-label: label + the whole delimiter ends here; the next label follows
    delimited_below: set[int] = field(default_factory=set)  # labels whose label + delimiter sequences pass through


def _trie(sequences, delimiter: tuple[int, ...] = ()) -> _Node:
    """The label sequences, and with a delimiter also each label followed by it: a multi-token delimiter may share
    its first tokens with a label's continuation (" |" is " " + "|" where " 日本" is " " + ...), so the delimiter is
    walked in the same trie rather than decided on its first token."""
    root = _Node()
    for label, ids in enumerate(sequences):
        node = root
        node.below.add(label)
        for token in ids:
            node = node.children.setdefault(token, _Node())
            node.below.add(label)
        if node.ends is not None:
            raise ValueError(f"Labels {node.ends} and {label} have the same token ids {list(ids)}.")
        node.ends = label
    if delimiter:
        for label, ids in enumerate(sequences):
            node = root
            for token in (*ids, *delimiter):
                node.delimited_below.add(label)
                node = node.children.setdefault(token, _Node())
            node.delimited_below.add(label)
            node.delimited = label
    return root


class VerbalizerLogitsProcessor(LogitsProcessor):
    """Masks every token that cannot continue a valid answer.

    The answer starts at the length of `input_ids` on the first call of a generation (prompts are left-padded, so
    they all end there). Allowed-token masks are computed once per answer state and cached, so a step costs one
    dictionary lookup per row and one `masked_fill`, with no loop over the vocabulary.
    """

    def __init__(self, tokens: LabelTokens):
        self.tokens = tokens
        delimiter = tuple(tokens.delimiter) if tokens.multi_label else ()
        self.first = _trie(tokens.first, delimiter)
        self.after = _trie(tokens.after_delimiter, delimiter) if tokens.multi_label else None
        self.num_labels = len(tokens.first)
        for root in filter(None, (self.first, self.after)):
            self._check_unambiguous(root)
        self._start: int | None = None
        self._last_length: int | None = None
        self._prompt: torch.Tensor | None = None
        self._states: dict[tuple[int, ...], tuple | None] = {}
        self._masks: dict[tuple, torch.Tensor] = {}
        self._allowed: dict[tuple, frozenset[int]] = {}
        self._warned = False

    def _check_unambiguous(self, node: _Node) -> None:
        stops = set(self.tokens.stop) & set(node.children)
        if node.ends is not None and stops:
            raise ValueError(
                f"Label {node.ends} is a prefix of another label followed by the stop token {min(stops)}: answers "
                "would be ambiguous. Choose stop tokens that do not occur in label texts."
            )
        if node.delimited is not None and (node.children or node.ends is not None):
            raise ValueError(
                f"Label {node.delimited} followed by the delimiter {list(self.tokens.delimiter)} is the start of "
                "another label's tokens: answers would be ambiguous. Choose another delimiter."
            )
        for child in node.children.values():
            self._check_unambiguous(child)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        length = input_ids.shape[1]
        if not self._continues(input_ids):
            # A new generation: the answer starts here.
            self._start, self._states = length, {}
            self._prompt = input_ids.detach().clone()
        self._last_length = length
        vocab = scores.shape[-1]
        states = [self._state(tuple(row)) for row in input_ids[:, self._start :].tolist()]
        allowed = torch.stack([self._mask(state, vocab, scores.device) for state in states])
        masked = scores.masked_fill(~allowed, float("-inf"))
        # Processors that run before this one (no_repeat_ngram_size, bad_words_ids, min_new_tokens, ...) may have
        # banned every valid continuation; the answer must stay valid, so the valid tokens become equally likely.
        spelling = torch.tensor([state is not None for state in states], device=scores.device)
        stuck = spelling & ~torch.isfinite(masked).any(-1)
        if stuck.any():
            if not self._warned:
                logger.warning(
                    "Other logits processors (e.g. no_repeat_ngram_size, bad_words_ids, min_new_tokens) banned every "
                    "valid continuation of an answer: the verbalizer keeps the answer valid by choosing among its "
                    "valid tokens uniformly there. Leave those options out of constrained classification."
                )
                self._warned = True
            # log(1/k) for k valid tokens: a uniform choice whether scores are logits or (beam search) log-probs.
            uniform = -allowed[stuck].sum(-1, keepdim=True).float().log()
            masked[stuck] = torch.where(allowed[stuck], uniform, float("-inf")).to(masked.dtype)
        return masked

    def _continues(self, input_ids: torch.LongTensor) -> bool:
        """Whether this call is the next step of the generation seen last: one token longer, same batch, and the same
        prompts (beam search reorders rows only among the beams of one prompt, which share it). A length check alone
        takes a new generation whose prompts are one token longer than the last step for a continuation."""
        prompt = self._prompt
        return (
            prompt is not None
            and input_ids.shape[1] == self._last_length + 1
            and input_ids.shape[0] == prompt.shape[0]
            and input_ids.device == prompt.device
            and torch.equal(input_ids[:, : self._start], prompt)
        )

    # A state is ("label", trie node, smallest allowed label, labels named before this one) while spelling a label or
    # the delimiter after it, or None when the answer is done (or off track).
    def _state(self, generated: tuple[int, ...]):
        if generated in self._states:
            return self._states[generated]
        if not generated:
            state = ("label", self.first, 0, 0)
        else:
            state = self._advance(self._state(generated[:-1]), generated[-1])
        self._states[generated] = state
        return state

    def _advance(self, state, token: int):
        if state is None:
            return None
        if token not in self._allowed_set(state):
            return None  # off track: a token the mask forbade (beam search takes some when too few are allowed)
        _, node, min_label, named = state
        if token in self.tokens.stop:
            return None
        child = node.children[token]
        if child.delimited is not None:
            return ("label", self.after, child.delimited + 1, named + 1)
        return ("label", child, min_label, named)

    def _allowed_ids(self, state) -> list[int]:
        _, node, min_label, named = state
        more = named + 1 < (self.tokens.max_labels or self.num_labels)
        allowed = [
            token
            for token, child in node.children.items()
            if max(child.below, default=-1) >= min_label
            or (more and any(min_label <= label < self.num_labels - 1 for label in child.delimited_below))
        ]
        if node.ends is not None and node.ends >= min_label:
            allowed += list(self.tokens.stop)
        return allowed

    @staticmethod
    def _key(state):
        return (id(state[1]), state[0], state[2], state[3]) if state is not None else None

    def _allowed_set(self, state) -> frozenset[int]:
        key = self._key(state)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = self._allowed[key] = frozenset(self._allowed_ids(state))
        return allowed

    def _mask(self, state, vocab: int, device) -> torch.Tensor:
        key = self._key(state)
        mask = self._masks.get(key)
        if mask is None or mask.shape[0] != vocab or mask.device != device:
            mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            if state is None:
                mask[:] = True  # the answer is complete (or a finished row is being padded): leave it alone
            else:
                mask[torch.tensor(sorted(self._allowed_set(state)), dtype=torch.long, device=device)] = True
            self._masks[key] = mask
        return mask
