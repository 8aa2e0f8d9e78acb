"""The token prefix that every prompt of a call starts with, encoded once and reused by every batch.

Instruction prompts open with the same tokens: the chat template's system turn, the instructions and the label
list, often 50 tokens or more before the text. Encoding them once and handing each batch a copy of their KV cache
takes them out of the per-example cost of label scoring and constrained decoding. The prefix is the longest common
prefix of the prompts' token ids, so no tokenization boundary is guessed. A batch's own tokens are left-padded after
the prefix (`[prefix][pads][tokens]`); the attention mask hides the pads and position ids count real tokens only, so
each row computes what it would alone. Where pads in the middle would change that (windowed attention counts cache
slots, not positions; recurrent and convolutional layers carry state through pads; PEFT prompt learning prepends
virtual tokens to every forward), nothing is shared and batches are plain left-padded prompts.
"""

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Cache
from transformers.cache_utils import LinearAttentionCacheLayerMixin


@dataclass
class SharedPrefix:
    """`ids`: the tokens every prompt starts with (each prompt keeps at least one token of its own); `cache`: their
    KV cache, `None` when nothing is shared; `device`: the model's."""

    ids: list[int]
    cache: Cache | None
    device: torch.device

    @classmethod
    @torch.no_grad()
    def encode(cls, model, prompts: Sequence[Sequence[int]], extra_tokens: int = 0) -> "SharedPrefix":
        """The prompts' shared opening, encoded, or nothing shared where padding between it and the rest of a prompt
        would change what the model computes: windowed attention (sliding or chunked) over more than the window once
        `extra_tokens` (answer tokens fed after the prompts) are added; recurrent or convolutional layers (their state
        runs through the pads); PEFT prompt learning (virtual tokens are prepended to every forward)."""
        device = next(model.parameters()).device
        ids = _common_prefix(prompts)
        window = attention_window(model)
        if (not ids or (window is not None and max(len(p) for p in prompts) + extra_tokens > window)
                or is_prompt_learning(model)):
            return cls.none(model)
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=True, **last_logits_only(model))
        if carries_state(out.cache):
            return cls.none(model)
        return cls(ids, out.cache, device)

    @classmethod
    def none(cls, model) -> "SharedPrefix":
        """Nothing shared: batches are plain left-padded prompts."""
        return cls([], None, next(model.parameters()).device)

    def inputs(self, prompts: Sequence[Sequence[int]], pad_token_id: int) -> dict:
        """Model inputs for prompts that start with the prefix: their remaining tokens left-padded, the attention
        mask over prefix + remaining tokens, position ids of the remaining tokens and (when there is a prefix) a
        copy of its cache for every row."""
        start = len(self.ids)
        rest = [list(ids[start:]) for ids in prompts]
        width = max(len(ids) for ids in rest)
        input_ids = [[pad_token_id] * (width - len(ids)) + ids for ids in rest]
        mask = torch.tensor([[1] * start + [0] * (width - len(ids)) + [1] * len(ids) for ids in rest],
                            device=self.device)
        inputs = {"input_ids": torch.tensor(input_ids, device=self.device), "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)[:, start:]}
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            repeat_rows(cache, torch.zeros(len(prompts), dtype=torch.long))
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


def carries_state(cache) -> bool:
    """Whether any layer of `cache` holds recurrent or convolutional state (Mamba, LFM2, hybrid layers that also
    attend): that state runs through every token fed, pads and side-by-side sequences included."""
    return any(isinstance(layer, LinearAttentionCacheLayerMixin) for layer in getattr(cache, "layers", ()))


def attention_window(model) -> int | None:
    """The shortest span of cache slots an attention layer looks back over (sliding window, Llama 4's chunks)."""
    config = model.config.get_text_config()
    windows = [getattr(config, "attention_chunk_size", None)]
    if getattr(config, "use_sliding_window", True) is not False:  # Qwen2 declares a window it does not use
        windows.append(getattr(config, "sliding_window", None))
    windows = [window for window in windows if window]
    return min(windows) if windows else None


def is_prompt_learning(model) -> bool:
    """Whether the model's active PEFT adapter prepends virtual tokens to every forward."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def repeat_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Make row `i` of `cache` (in place) a copy of its row `rows[i]`. Beam search's `reorder_cache` takes any row
    index on every layer type, where `batch_repeat_interleave` is missing on convolutional/recurrent layers."""
    cache.reorder_cache(rows)


def supports_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def last_logits_only(model) -> dict:
    """Forward kwargs that skip the LM head everywhere but the last position (over a 50k vocabulary it adds a
    quarter to a small model's compute, and a (batch, length, vocab) tensor to its memory)."""
    return {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
