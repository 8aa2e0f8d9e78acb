"""Texts: the one normalisation every path applies before a text is tokenized, texts built from a row's columns,
and tokenisation with truncation that leaves room for a pooling suffix.

Training, evaluation, `classify_texts`, `TextClassifier`, the pipeline, instruction prompts, TF-IDF students and
distillation pools all call `normalize_text`, so a text means the same thing wherever it goes: a classifier trained
on stripped texts and served raw scored P(business) 0.777 for a text with leading spaces and a trailing newline
against 0.612 for the same text stripped. The rule is deliberately small: the Unicode White_Space characters are
removed from both ends; nothing inside a text changes (line breaks between a title and a body carry meaning).

The same rule is written into saved last-token tokenizers as a `tokenizers` `Strip` normalizer (which strips exactly
the White_Space set, as `normalize_text` does), so plain `transformers` users of a saved or exported model, who never
call this module, see the same tokens.
"""

from __future__ import annotations

import json
import logging
import os
import string
import tempfile
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .labels import check_columns

if TYPE_CHECKING:  # datasets loads only where data is read: prediction imports this module too
    from datasets import Dataset

logger = logging.getLogger(__name__)

# Unicode's White_Space property (PropList.txt): the characters the `tokenizers` Strip normalizer removes. Python's
# `str.strip()` also strips U+001C..U+001F, which the tokenizer keeps; naming the set keeps both sides identical.
WHITESPACE = "".join(map(chr, (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
                               0x2029, 0x202F, 0x205F, 0x3000)))


def normalize_text(text: str) -> str:
    """`text` without leading and trailing white space (the Unicode White_Space set); inner text unchanged."""
    return text.strip(WHITESPACE)


def normalize_texts(texts: Iterable[str]) -> list[str]:
    return [normalize_text(text) for text in texts]


def check_texts(texts) -> list[str]:
    """`texts` normalised, as a list, or an error naming the rows that are empty (after normalisation) or not
    strings. Every inference path starts here."""
    if isinstance(texts, str):
        raise TypeError("Pass a list of texts, not a single string.")
    texts = list(texts)
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not normalize_text(text)]
    if bad:
        raise ValueError(f"Texts {bad[:20]} are empty, white space only, or not strings ({len(bad)} in all).")
    return normalize_texts(texts)


def check_batch_size(batch_size) -> int:
    """A positive int batch size, or an error naming it (0 used to fail obscurely and -1 to return None results)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def length_sorted_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Row indices of `encoded` (token ids per text), longest first, in batches of `batch_size`: batches of similar
    length, so little compute goes to padding (1.98x at 1024 tokens on BBC, benchmarks/results/speed.md). Every engine
    that runs token ids batches them this way."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def set_truncation(tokenizer, max_length: int, side: str) -> None:
    """Make `tokenizer` cut texts where training cut them (`truncation=True`: at `max_length` tokens, keeping the start
    for side "right" or the end for "left"), in memory and once saved. `save_pretrained` writes `model_max_length`
    but `truncation_side` only when it is among the tokenizer's `init_kwargs`: set on the object alone, the side
    survived only in tokenizer.json's truncation state, which the tokenizer's last call sets (any untruncated call
    clears it), and a left-truncating model could reload keeping the start, in every saved kind."""
    tokenizer.model_max_length = max_length
    tokenizer.truncation_side = side
    tokenizer.init_kwargs["truncation_side"] = side


def add_strip_normalizer(tokenizer):
    """The tokenizer to encode and save with from now on: `tokenizer` made to strip its input as `normalize_text`
    does, before its own normalizer (a no-op where it strips already), so that plain transformers users of a saved
    model see the tokens training saw. Only for tokenizers that encode a whole input text: a prompt's tokenizer must
    keep the newline a chat template ends with. A tokenizer without a `tokenizers` backend cannot carry the rule and
    comes back unchanged (callers that bypass this package must strip themselves).

    Where its class is a model's own (GPT2Tokenizer, as SmolLM2's Hub repo names it; Qwen2Tokenizer, GemmaTokenizer,
    BertTokenizer, ...), it comes back as a generic `PreTrainedTokenizerFast` copy, which saves and reloads
    tokenizer.json whole: transformers 5 rebuilds such a class's pipeline from its vocabulary on load, keeping only
    tokenizer.json's post-processor, padding and truncation, so the saved rule was dropped (measured: Gemma 3 270M's
    tokenizer, saved with it, reloaded encoding "  the bank cut interest rates\\n" with one more token than training
    saw; SmolLM2's under GPT2Tokenizer, "  hello\\n" as 3 tokens against 1)."""
    from tokenizers import normalizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    existing = backend.normalizer
    if not _strips(existing):
        strip = normalizers.Strip(left=True, right=True)
        backend.normalizer = strip if existing is None else normalizers.Sequence([strip, existing])
    if not strips_whole_texts(tokenizer):
        logger.warning("This tokenizer splits white space off as added tokens of its own before its normalizer "
                       "runs (as Gemma 3's does with runs of line breaks and tabs), so the saved tokenizer does not "
                       "strip those at the ends of a text: users of plain transformers must strip texts themselves "
                       "(TextClassifier and the hf-clf CLI do).")
    return _loads_as_saved(tokenizer)


def strips_whole_texts(tokenizer) -> bool:
    """Whether `tokenizer` encodes a text with white space and line breaks around it as the text alone. False where
    added tokens made of white space are split off before the normalizer runs, which no normalizer can then strip:
    Gemma 3's tokenizer holds runs of 1 to 31 line breaks and of 1 to 31 tabs as added tokens, so with the Strip
    normalizer "x\\n" still ends in the '\\n' token, and spaces next to an inner line break are stripped too (in
    training as in serving: the first 256 tokens of 14 of the 2,225 BBC articles differ from those without it)."""
    probe = tokenizer("x", add_special_tokens=False)["input_ids"]
    return tokenizer(" \n\tx \n", add_special_tokens=False)["input_ids"] == probe


def _loads_as_saved(tokenizer):
    """`tokenizer`, or where its class rebuilds its pipeline on load, a generic copy that loads tokenizer.json whole
    (its special tokens, chat template, lengths and sides carried by a save and reload)."""
    from transformers import PreTrainedTokenizerFast

    if type(tokenizer) is PreTrainedTokenizerFast:
        return tokenizer
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        generic = PreTrainedTokenizerFast.from_pretrained(folder)
    generic.name_or_path = tokenizer.name_or_path
    return generic


def _strips(normalizer) -> bool:
    if normalizer is None:
        return False
    probe = " \n\u3000x\u2028 "
    return normalizer.normalize_str(probe) == normalizer.normalize_str("x")


def template_fields(template: str) -> list[str]:
    """The column names a `str.format` template refers to (`"{title}\\n\\n{abstract}"` -> title, abstract)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def text_template(text_columns: Sequence[str], template: str | None) -> tuple[str, list[str]]:
    """The template that builds a row's text (default: the text columns, blank lines between them) and the columns it
    reads, or an error when it reads none, cannot be parsed, or has a positional field (`{}`, `{0}`: nothing to
    fill it with)."""
    if template is None:
        template = "\n\n".join("{" + column + "}" for column in text_columns)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f"The text template {template!r} cannot be parsed ({error}); write literal braces as "
                         "'{{' and '}}'.") from None
    positional = [name for _, name, _, _ in parsed if name is not None and (name == "" or name.isdigit())]
    if positional:
        raise ValueError(f"The text template {template!r} has a positional field ({{{positional[0]}}}): name a "
                         "column, e.g. '{text}'.")
    fields = template_fields(template)
    if not fields:
        raise ValueError(f"The text template {template!r} refers to no column: use e.g. '{{text}}'.")
    return template, fields


def row_text(values: dict, template: str, where: str) -> str:
    """One row's text: `template` filled with the row's `values` (its fields), each field and the whole normalised by
    `normalize_text` (as every inference path normalises); non-text values are an error naming `where`."""
    bad = [name for name, value in values.items() if not isinstance(value, str)]
    if bad:
        raise ValueError(f"{where} has non-text values in {bad}: {values}.")
    return normalize_text(template.format(**{name: normalize_text(value) for name, value in values.items()}))


def build_texts(dataset: Dataset, text_columns: Sequence[str], template: str | None, split: str) -> list[str]:
    """One string per row (`row_text` over `text_template`). Empty texts are an error naming the rows."""
    template, fields = text_template(text_columns, template)
    check_columns(dataset, fields, split)
    columns = {name: dataset[name] for name in fields}
    texts = [row_text({name: columns[name][row] for name in fields}, template, f"Row {row} of the {split} data")
             for row in range(len(dataset))]
    empty = [row for row, text in enumerate(texts) if not text]
    if empty:
        raise ValueError(f"Rows {empty[:20]} of the {split} data have empty text ({len(empty)} in all).")
    return texts


def load_tokenizer(model, gguf_file: str | None = None):
    """The tokenizer saved with `model` (a name, a path or a loaded model), for a trainer given none."""
    from transformers import AutoTokenizer
    from transformers.utils.quantization_config import QuantizationMethod

    if getattr(model, "quantization_method", None) == QuantizationMethod.GGUF:
        raise ValueError("Pass the tokenizer as processing_class: a model loaded from a GGUF file does not say which "
                         "file its tokenizer is in.")
    source = model if isinstance(model, (str, os.PathLike)) else model.name_or_path
    return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)


def tokenize_texts(
    texts: Sequence[str],
    tokenizer,
    max_length: int,
    *,
    truncation_side: str = "right",
    reserve: int = 0,
) -> tuple[dict[str, list[list[int]]], int]:
    """Token ids of `texts` (and how many were cut), each at most `max_length - reserve` tokens (`reserve` leaves room
    for the pooling suffix the model appends). The tokenizer truncates itself, keeping the special tokens it adds at
    the start, the end or both (BOS, an appended EOS), so training cuts exactly as `tokenizer(text, truncation=True)`
    does in `classify_texts` and `pipeline()`. `truncation_side="right"` keeps the start of a long text, `"left"` its
    end."""
    if truncation_side not in ("right", "left"):
        raise ValueError("truncation_side must be 'right' (keep the start) or 'left' (keep the end), "
                         f"got {truncation_side!r}.")
    special = tokenizer.num_special_tokens_to_add(pair=False)
    room = max_length - reserve
    if room - special < 1:
        raise ValueError(
            f"max_length={max_length} leaves no room for text after {special} special and {reserve} suffix tokens."
        )
    texts = list(texts)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    truncated = sum(length > room - special for length in lengths)
    if truncated:
        logger.info("%d of %d texts are longer than %d tokens and were truncated.", truncated, len(texts),
                    room - special)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = truncation_side
    try:
        input_ids = tokenizer(texts, truncation=True, max_length=room, verbose=False)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}, truncated


def suffix_ids(tokenizer, suffix: str) -> list[int]:
    """Token ids of the pooling suffix, which follows a text: its white space kept (the leading newline of the default
    suffix), also with a tokenizer that strips whole texts (`texts.add_strip_normalizer`: this trainer's, or one saved
    with a model)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        state = json.loads(backend.to_str())
        normalizer = _without_strip(state.get("normalizer"))
        if normalizer != state.get("normalizer"):
            state["normalizer"] = normalizer
            return Tokenizer.from_str(json.dumps(state)).encode(suffix, add_special_tokens=False).ids
    return tokenizer(suffix, add_special_tokens=False)["input_ids"]


def _without_strip(normalizer: dict | None) -> dict | None:
    if normalizer is None or normalizer.get("type") == "Strip":
        return None
    if normalizer.get("type") == "Sequence":
        kept = [step for step in normalizer["normalizers"] if step.get("type") != "Strip"]
        return {**normalizer, "normalizers": kept} if kept else None
    return normalizer
