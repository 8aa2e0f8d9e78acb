"""Labels <-> label texts <-> the token ids those texts have *in context*, right after the prompt.

Tokenizers merge across boundaries (`"Label:" + " positive"` is not `"Label: " + "positive"`), so label token ids
are always computed by tokenizing the context together with the answer and keeping what follows the context. The
same ids are used to train (SFT completions), to constrain generation and to score labels.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from transformers.utils import cached_file

VERBALIZER_FILE = "verbalizer.json"


@dataclass(frozen=True)
class LabelTokens:
    """Token ids of every label in context, plus the delimiter and the tokens that end an answer."""

    first: tuple[tuple[int, ...], ...]  # label i right after the prompt
    after_delimiter: tuple[tuple[int, ...], ...]  # label i after another label and the delimiter (multi-label)
    delimiter: tuple[int, ...]  # the delimiter right after a label (multi-label)
    stop: tuple[int, ...]  # tokens that end an answer; stop[0] is the one training appends
    multi_label: bool
    max_labels: int | None

    @property
    def max_answer_length(self) -> int:
        """Tokens of the longest valid answer, stop token included."""
        if not self.multi_label:
            return max(len(ids) for ids in self.first) + 1
        longest = sorted((len(ids) for ids in self.after_delimiter), reverse=True)
        count = self.max_labels or len(longest)
        first = max(len(ids) for ids in self.first)
        return first + sum(longest[: count - 1]) + (count - 1) * len(self.delimiter) + 1


@dataclass
class Verbalizer:
    """The label set of an instruction-tuned classifier and how answers spell it.

    Args:
        labels: class names in id order.
        label_texts: what the model writes for each label (default: the names), e.g. `{"pos": "positive"}`.
        multi_label: answers name one or more labels, joined by `delimiter` in label-id order, each at most once.
        delimiter: separator of multi-label answers. Spaces at its end belong to the next label's text, as BPE
            tokenizers attach a leading space to words.
        max_labels: multi-label: at most this many labels per answer.
    """

    labels: list[str]
    label_texts: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False
    delimiter: str = ", "
    max_labels: int | None = None

    def __post_init__(self):
        self.labels = [str(label) for label in self.labels]
        if not self.labels:
            raise ValueError("The label set is empty: a verbalizer needs at least one label.")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"Duplicate labels: {self.labels}.")
        odd = {key: text for key, text in self.label_texts.items()
               if not isinstance(key, str) or not isinstance(text, str)}
        if odd:
            raise ValueError(
                f"label_texts maps label names (strings) to answer texts (strings); got {odd!r}. The labels are "
                f"{self.labels}: write e.g. {{{self.labels[-1]!r}: 'yes'}}."
            )
        unknown = set(self.label_texts) - set(self.labels)
        if unknown:
            raise ValueError(f"label_texts names labels that are not in the label set: {sorted(unknown)}.")
        texts = self.texts
        empty = [label for label, text in zip(self.labels, texts) if not text.strip()]
        if empty:
            raise ValueError(f"Labels {empty} have empty label texts.")
        padded = [text for text in texts if text != text.strip()]
        if padded:
            raise ValueError(
                f"Label texts {padded} start or end with whitespace: answers are stripped when parsed, so they could "
                "not be read back. Give these labels stripped texts in `label_texts`; spacing before the first label "
                "belongs in `lead`, spacing between labels at the end of the delimiter."
            )
        duplicated = sorted({text for text in texts if texts.count(text) > 1})
        if duplicated:
            raise ValueError(f"Several labels share the label texts {duplicated}: answers would be ambiguous.")
        if self.multi_label:
            if not self.delimiter.strip():
                raise ValueError("The multi-label delimiter must contain a visible character, e.g. ', ' or '; '.")
            clashing = [text for text in texts if self.delimiter.strip() in text]
            if clashing:
                raise ValueError(f"Label texts {clashing} contain the delimiter {self.delimiter!r}: choose another.")
            if self.max_labels is not None and self.max_labels < 1:
                raise ValueError(f"max_labels must be at least 1, got {self.max_labels}.")

    @property
    def texts(self) -> list[str]:
        """The label text of every label, in id order."""
        return [self.label_texts.get(label, label) for label in self.labels]

    # --- answers as text ---------------------------------------------------------------------------------------------

    def answer(self, label_ids: int | Sequence[int]) -> str:
        """The canonical answer: one label text, or several joined by the delimiter in label-id order."""
        ids = [label_ids] if isinstance(label_ids, int) else sorted(set(label_ids))
        if not ids:
            raise ValueError("An answer names at least one label.")
        if len(ids) > 1 and not self.multi_label:
            raise ValueError(f"A single-label answer names one label, got {ids}.")
        if any(not 0 <= i < len(self.labels) for i in ids):
            raise ValueError(f"Label ids {ids} are out of range for {len(self.labels)} labels.")
        texts = self.texts
        return self.delimiter.join(texts[i] for i in ids)

    def parse(self, answer: str) -> list[int]:
        """Label ids named by a generated answer (stripped); raises on text that names no valid label set."""
        by_text = {text: i for i, text in enumerate(self.texts)}
        parts = [answer.strip()] if not self.multi_label else [p.strip() for p in answer.split(self.delimiter.strip())]
        unknown = [part for part in parts if part not in by_text]
        if unknown:
            raise ValueError(f"The answer {answer!r} names unknown labels {unknown}; labels are {self.texts}.")
        return sorted({by_text[part] for part in parts})

    # --- answers as tokens -------------------------------------------------------------------------------------------

    def label_tokens(self, tokenizer, context: str, *, lead: str = "", stop_ids: Sequence[int] = ()) -> LabelTokens:
        """Token ids of each label as the model sees them after `context` (the end of a prompt, e.g. the chat
        template's assistant header or `"...\\nLabel:"`), with `lead` (e.g. `" "`) before the first label.

        `stop_ids`: tokens that end an answer (default: the tokenizer's eos)."""
        stop = tuple(dict.fromkeys(list(stop_ids) or [tokenizer.eos_token_id]))
        if None in stop or not stop:
            raise ValueError("The tokenizer has no eos token to end answers with: pass stop_ids.")
        texts = self.texts
        _check_special_tokens(tokenizer, dict(zip(self.labels, texts)), self.delimiter if self.multi_label else "")
        first = tuple(_continuation(tokenizer, context, lead + text, label) for label, text in zip(self.labels, texts))
        after_delimiter: tuple[tuple[int, ...], ...] = ()
        delimiter: tuple[int, ...] = ()
        if self.multi_label:
            core = self.delimiter.rstrip(" ")
            spacing = self.delimiter[len(core):]
            delimiters = {
                _continuation(
                    tokenizer, context + lead + text, core, f"the delimiter after {label!r}", fix=_DELIMITER_FIX
                )
                for label, text in zip(self.labels, texts)
            }
            if len(delimiters) != 1:
                raise ValueError(
                    f"The delimiter {core!r} tokenizes differently after different labels ({sorted(delimiters)}): "
                    "choose a delimiter that does not merge with label texts."
                )
            delimiter = delimiters.pop()
            anchor = context + lead + texts[0] + core
            after_delimiter = tuple(
                _continuation(tokenizer, anchor, spacing + text, f"{label!r} after the delimiter", fix=_DELIMITER_FIX)
                for label, text in zip(self.labels, texts)
            )
        for label, ids in zip(self.labels * 2, first + after_delimiter):
            inside = [token for token in ids if token in stop]
            if inside:
                raise ValueError(
                    f"The tokens of label {label!r} contain the stop token {inside[0]} "
                    f"({tokenizer.convert_ids_to_tokens(inside[0])!r}): generation would end inside the label. "
                    "Choose another label text, or other stop tokens."
                )
        return LabelTokens(
            first=first,
            after_delimiter=after_delimiter,
            delimiter=delimiter,
            stop=stop,
            multi_label=self.multi_label,
            max_labels=self.max_labels,
        )

    def answer_ids(self, tokens: LabelTokens, label_ids: int | Sequence[int]) -> list[int]:
        """The token ids of the canonical answer, ending with the stop token (what SFT trains on)."""
        ids = [label_ids] if isinstance(label_ids, int) else sorted(set(label_ids))
        self.answer(ids)  # validates
        out = list(tokens.first[ids[0]])
        for i in ids[1:]:
            out += list(tokens.delimiter) + list(tokens.after_delimiter[i])
        return out + [tokens.stop[0]]

    # --- persistence -------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, VERBALIZER_FILE), "w", encoding="utf-8") as file:
            json.dump(asdict(self), file, indent=2, ensure_ascii=False)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **hub_options) -> "Verbalizer":
        """From a folder or a Hub repo id (`revision`, `cache_dir`, `token`, `local_files_only` apply)."""
        path = cached_file(directory, VERBALIZER_FILE, _raise_exceptions_for_missing_entries=False, **hub_options)
        if path is None:
            raise FileNotFoundError(f"No {VERBALIZER_FILE} in {directory}: it was not saved with a verbalizer.")
        with open(path, encoding="utf-8") as file:
            return cls(**json.load(file))


def _check_special_tokens(tokenizer, label_texts: dict[str, str], delimiter: str) -> None:
    """Refuse label texts (and a delimiter) that are or contain special tokens: decoding would stop inside a label
    that holds a stop token, and answers are read back with special tokens skipped, so `yes<|endoftext|>` would come
    back as `yes`."""
    specials = {str(token) for token in getattr(tokenizer, "all_special_tokens", [])}
    specials |= {str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values()
                 if getattr(token, "special", False)}
    specials.discard("")
    for what, text in [*((f"label {label!r}", t) for label, t in label_texts.items()), ("the delimiter", delimiter)]:
        found = sorted(token for token in specials if token in text)
        if found:
            raise ValueError(
                f"The text of {what} ({text!r}) contains the special token {found[0]!r}: generation would stop inside "
                "it or drop it when answers are decoded. Choose a text without special tokens."
            )


_PROMPT_FIX = "end the prompt on a token boundary, e.g. with a newline or ':' and no trailing space"
_DELIMITER_FIX = "choose a delimiter that does not merge with the label texts"


def _continuation(tokenizer, context: str, text: str, what: str, *, fix: str = _PROMPT_FIX) -> tuple[int, ...]:
    """Ids that `text` adds after `context` when both are tokenized together."""
    before = tokenizer(context, add_special_tokens=False)["input_ids"]
    joined = tokenizer(context + text, add_special_tokens=False)["input_ids"]
    if joined[: len(before)] != before:
        where = "prompt's last tokens" if fix is _PROMPT_FIX else f"last tokens of {context[-20:]!r}"
        raise ValueError(f"The {where} merge with {what!r} ({text!r}): {fix}.")
    ids = tuple(joined[len(before):])
    if not ids:
        raise ValueError(f"The label text of {what!r} ({text!r}) tokenizes to nothing.")
    return ids
