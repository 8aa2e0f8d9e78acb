"""The token prefix that every prompt of a call starts with, encoded once and reused by every batch.

Instruction prompts open with the same tokens: the chat template's system turn, the instructions and the label
list, often 50 tokens or more before the text. Encoding them once and handing each batch a copy of their KV cache
takes them out of the per-example cost of label scoring and constrained decoding. The prefix is the longest common
prefix of the prompts' token ids, so no tokenization boundary is guessed. A batch's own tokens are left-padded after
the prefix (`[prefix][pads][tokens]`); the attention mask hides the pads and position ids count real tokens only, so
each row computes what it would alone. Sliding-window attention counts cache slots rather than positions, so with a
window shorter than a padded row nothing is shared.
"""

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Cache


@dataclass
class SharedPrefix:
    """`ids`: the tokens every prompt starts with (each prompt keeps at least one token of its own); `cache`: their
    KV cache, `None` when nothing is shared; `device`: the model's."""

    ids: list[int]
    cache: Cache | None
    device: torch.device

    @classmethod
    @torch.no_grad()
    def encode(cls, model, prompts: Sequence[Sequence[int]]) -> "SharedPrefix":
        device = next(model.parameters()).device
        ids = _common_prefix(prompts)
        window = _sliding_window(model)
        if not ids or (window is not None and max(len(p) for p in prompts) > window):
            return cls([], None, device)
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, **last_logits_only(model))
        return cls(ids, out.cache, device)

    def inputs(self, prompts: Sequence[Sequence[int]], pad_token_id: int) -> dict:
        """Model inputs for prompts that start with the prefix: their remaining tokens left-padded, the attention
        mask over prefix + remaining tokens, position ids of the remaining tokens and (when there is a prefix) a
        copy of its cache for every row."""
        start = len(self.ids)
        rest = [list(ids[start:]) for ids in prompts]
        width = max(len(ids) for ids in rest)
        input_ids = [[pad_token_id] * (width - len(ids)) + ids for ids in rest]
        mask = torch.tensor([[1] * start + [0] * (width - len(ids)) + [1] * len(ids) for ids in rest], device=self.device)
        inputs = {"input_ids": torch.tensor(input_ids, device=self.device), "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]}
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(prompts))
            inputs["cache"] = cache
        return inputs


def _common_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    if not prompts:
        return []
    first, shortest = prompts[0], min(len(ids) for ids in prompts)
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in prompts):
        length += 1
    return list(first[:length])


def _sliding_window(model) -> int | None:
    config = model.config.get_text_config()
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2 declares a window it does not use
        return None
    return getattr(config, "sliding_window", None) or None


def supports_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def last_logits_only(model) -> dict:
    """Forward kwargs that skip the LM head everywhere but the last position (over a 50k vocabulary it adds a
    quarter to a small model's compute, and a (batch, length, vocab) tensor to its memory)."""
    return {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
