"""The one text normalisation every path applies before a text is tokenized.

Training, evaluation, `predict_texts`, `TextClassifier`, the pipeline, instruction prompts, TF-IDF students and
distillation pools all call `normalize_text`, so a text means the same thing wherever it goes: a classifier trained
on stripped texts and served raw scored P(business) 0.777 for a text with leading spaces and a trailing newline
against 0.612 for the same text stripped. The rule is deliberately small: the Unicode White_Space characters are
removed from both ends; nothing inside a text changes (line breaks between a title and a body carry meaning).

The same rule is written into saved last-token tokenizers as a `tokenizers` `Strip` normalizer (which strips exactly
the White_Space set, as `normalize_text` does), so plain `transformers` users of a saved or exported model, who never
call this module, see the same tokens.
"""

from collections.abc import Iterable

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


def add_strip_normalizer(tokenizer) -> bool:
    """Make a fast tokenizer strip its input as `normalize_text` does, before its own normalizer; a no-op where it
    strips already. Returns False for a tokenizer without a `tokenizers` backend (it cannot carry the rule: callers
    that bypass this package must strip themselves). Only for tokenizers that encode a whole input text: a prompt's
    tokenizer must keep the newline a chat template ends with."""
    from tokenizers import normalizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    existing = backend.normalizer
    if _strips(existing):
        return True
    strip = normalizers.Strip(left=True, right=True)
    backend.normalizer = strip if existing is None else normalizers.Sequence([strip, existing])
    return True


def _strips(normalizer) -> bool:
    if normalizer is None:
        return False
    probe = " \n\u3000x\u2028 "
    return normalizer.normalize_str(probe) == normalizer.normalize_str("x")
