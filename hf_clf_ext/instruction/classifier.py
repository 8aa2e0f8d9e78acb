"""The instruction-based approach at inference: prompts built from a template (through the tokenizer's chat
template when it has one), and a classifier that answers by constrained generation or by label scoring."""

import json
import os
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
from transformers.utils import ADAPTER_CONFIG_NAME, cached_file

from .logits_process import VerbalizerLogitsProcessor
from .prompt_cache import SharedPrefix
from .scoring import score_labels
from ..labels import results_from_probabilities
from ..texts import check_batch_size, check_texts, normalize_text
from .verbalizer import LabelTokens, Verbalizer

PROMPT_FILE = "instruction_prompt.json"
HUB_OPTIONS = ("revision", "cache_dir", "token", "local_files_only")
DEFAULT_TEMPLATE = "Classify the text into one of these labels: {labels}.\n\nText: {text}"
DEFAULT_MULTI_LABEL_TEMPLATE = (
    "Classify the text with one or more of these labels: {labels}. Separate several labels with '{delimiter}'."
    "\n\nText: {text}"
)
# Plain (non-chat) prompts end with this cue; answers then start with a space, which BPE tokenizers attach to the
# first word. The prompt never ends with a space, so prompt and answer tokens never merge.
ANSWER_CUE = "\nLabel:"
TEMPLATE_FIELDS = {"text", "labels", "delimiter"}
METHODS = ("generate", "score")
# Constrained decoding names labels without probabilities: only label metrics (F1, accuracy) apply to it.
HARD_LABEL_METHODS = frozenset({"generate"})


@dataclass
class InstructionPrompt:
    """How a text becomes a prompt.

    Args:
        template: `str.format` template with a `{text}` placeholder; `{labels}` (the label texts, comma-separated)
            and `{delimiter}` are optional.
        use_chat_template: wrap the prompt as a user message through the tokenizer's chat template.
        system_prompt: optional system message (chat templates only).
    """

    template: str = DEFAULT_TEMPLATE
    use_chat_template: bool = True
    system_prompt: str | None = None

    def __post_init__(self):
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None]
        except ValueError as error:  # an unmatched brace
            raise ValueError(f"The prompt template is not a valid str.format template ({error}): {self.template!r}. "
                             "Write literal braces as {{ and }}.") from error
        accessed = [name for name in names if name and any(mark in name for mark in ".[")]
        if accessed:
            raise ValueError(f"The prompt template reads attributes or items of a placeholder ({{{accessed[0]}}}): "
                             f"use the plain placeholders {sorted(TEMPLATE_FIELDS)}, e.g. {{text}}.")
        positional = [name for name in names if name == "" or name.isdigit()]
        if positional:
            raise ValueError(f"The prompt template has a positional placeholder ({{{positional[0]}}}): name it, e.g. "
                             "{text}.")
        fields = set(names)
        if "text" not in fields:
            raise ValueError(f"The prompt template has no {{text}} placeholder: {self.template!r}.")
        unknown = fields - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"The prompt template uses unknown placeholders {sorted(unknown)}; "
                             f"known: {sorted(TEMPLATE_FIELDS)}.")

    def render(self, tokenizer, verbalizer: Verbalizer, text: str) -> str:
        """The full prompt string, ending exactly where the answer starts."""
        content = self.template.format(text=text, labels=", ".join(verbalizer.texts), delimiter=verbalizer.delimiter)
        if not self.use_chat_template:
            return content + ANSWER_CUE
        return tokenizer.apply_chat_template(self._messages(content), tokenize=False, add_generation_prompt=True)

    @property
    def lead(self) -> str:
        """What precedes the first label in an answer."""
        return "" if self.use_chat_template else " "

    def stop_ids(self, tokenizer) -> list[int]:
        """Tokens that end an answer: the chat template's end-of-turn token (first: training appends it), and eos."""
        ids = []
        if self.use_chat_template:
            marker = "LABEL_TEXT_MARKER"
            rendered = tokenizer.apply_chat_template(
                self._messages("x") + [{"role": "assistant", "content": marker}], tokenize=False
            )
            after = rendered[rendered.index(marker) + len(marker):]
            following = tokenizer(after, add_special_tokens=False)["input_ids"]
            if following:
                ids.append(following[0])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if not ids:
            raise ValueError("The tokenizer has neither an end-of-turn token nor an eos token to end answers with.")
        return list(dict.fromkeys(ids))

    def _messages(self, content: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": content}]

    def encode(self, tokenizer, verbalizer: Verbalizer, text: str, max_length: int | None,
               answer_length: int) -> list[int]:
        """Prompt token ids, with `text` cut (never the instructions, never the answer) so that the prompt plus an
        answer of `answer_length` tokens fit in `max_length`."""
        if not isinstance(text, str) or not normalize_text(text):
            raise ValueError(f"Empty text: {text!r}.")
        text = normalize_text(text)  # training and inference prompts hold the text as data.build_texts gives it
        ids = self._ids(tokenizer, verbalizer, text)
        if max_length is None or len(ids) + answer_length <= max_length:
            return ids
        overhead = len(self._ids(tokenizer, verbalizer, "")) + answer_length
        text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        room = max_length - overhead
        while room > 0:
            ids = self._ids(tokenizer, verbalizer, tokenizer.decode(text_ids[:room]))
            if len(ids) + answer_length <= max_length:
                return ids
            room -= len(ids) + answer_length - max_length  # re-tokenizing the cut text can shift a token or two
        raise ValueError(
            f"max_length={max_length} leaves no room for the text: the prompt alone takes {overhead - answer_length} "
            f"tokens and answers up to {answer_length}."
        )

    def _ids(self, tokenizer, verbalizer: Verbalizer, text: str) -> list[int]:
        rendered = self.render(tokenizer, verbalizer, text)
        # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (e.g. BOS).
        return tokenizer(rendered, add_special_tokens=not self.use_chat_template)["input_ids"]


class InstructionClassifier:
    """A causal LM (plain or PEFT) + tokenizer + prompt + verbalizer that classifies raw texts.

    `classify(texts, method="generate")` decodes greedily under `VerbalizerLogitsProcessor`, so every answer is a
    valid label (set); `method="score"` returns label probabilities from `score_labels` (one prompt pass each).
    """

    def __init__(self, model, tokenizer, prompt: InstructionPrompt, verbalizer: Verbalizer,
                 max_length: int | None = None, decision_thresholds: Sequence[float] | None = None):
        labels = len(verbalizer.labels)
        if decision_thresholds is not None and (not verbalizer.multi_label or len(decision_thresholds) != labels):
            raise ValueError(f"decision_thresholds are one per label of a multi-label verbalizer ({labels} labels, "
                             f"multi_label={verbalizer.multi_label}), got {list(decision_thresholds)}.")
        self.decision_thresholds = None if decision_thresholds is None else [float(t) for t in decision_thresholds]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if prompt.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("use_chat_template=True, but the tokenizer has no chat template.")
        self.model, self.tokenizer, self.prompt, self.verbalizer = model, tokenizer, prompt, verbalizer
        self.max_length = max_length
        context = prompt.render(tokenizer, verbalizer, "x")
        self.tokens: LabelTokens = verbalizer.label_tokens(
            tokenizer, context, lead=prompt.lead, stop_ids=prompt.stop_ids(tokenizer)
        )

    @property
    def max_answer_length(self) -> int:
        """Tokens of the longest valid answer, stop token included."""
        return self.tokens.max_answer_length

    def logits_processor(self) -> VerbalizerLogitsProcessor:
        """A processor for your own `generate()` calls on prompts built by `prompt_ids`."""
        return VerbalizerLogitsProcessor(self.tokens)

    def prompt_ids(self, texts: Sequence[str]) -> list[list[int]]:
        texts = check_texts(texts)
        return [
            self.prompt.encode(self.tokenizer, self.verbalizer, text, self.max_length, self.max_answer_length)
            for text in texts
        ]

    @torch.no_grad()
    def classify(self, texts: Sequence[str], method: str = "generate", batch_size: int = 8) -> list[dict]:
        """`{"label"}` / `{"labels"}` per text, plus `"probabilities"` (and `"score"`, single-label) when
        `method="score"`. Multi-label scores name the labels that reach `decision_thresholds` (tuned on validation
        by the recipe; 0.5 otherwise), and at least the most probable one, as decoding does."""
        if method not in METHODS:
            raise ValueError(f"method must be 'generate' or 'score', got {method!r}.")
        check_batch_size(batch_size)
        prompts = self.prompt_ids(texts)
        # Longest first, so that batches hold prompts of similar length and little compute goes to padding.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
        prompts = [prompts[i] for i in order]
        names = self.verbalizer.labels
        if method == "score":
            probabilities = score_labels(
                self.model, prompts, self.tokens, pad_token_id=self.tokenizer.pad_token_id, batch_size=batch_size
            )
            # Decoding names at least one label: so does scoring, the most probable one when none reaches its
            # threshold.
            results = results_from_probabilities(probabilities, names, self.tokens.multi_label,
                                                 self.decision_thresholds, at_least_one=True)
        else:
            results = [self._as_result(ids) for ids in self._generate(prompts, batch_size)]
        in_input_order: list[dict] = [{}] * len(results)
        for position, index in enumerate(order):
            in_input_order[index] = results[position]
        return in_input_order

    def _generate(self, prompts: list[list[int]], batch_size: int) -> list[list[int]]:
        processor = self.logits_processor()
        pad = self.tokenizer.pad_token_id
        was_training = self.model.training
        self.model.eval()
        answers = []
        try:
            # generate() refuses a cache of ours when the model's generation config names a cache implementation.
            sharing = getattr(self.model.generation_config, "cache_implementation", None) in (None, "hybrid")
            shared = (SharedPrefix.encode(self.model, prompts, extra_tokens=self.max_answer_length) if sharing
                      else SharedPrefix.none(self.model))
            for start in range(0, len(prompts), batch_size):
                inputs = shared.inputs(prompts[start : start + batch_size], pad)
                # generate() reads the whole sequence; the shared prefix's tokens are in the cache already.
                prefix = torch.tensor([shared.ids], dtype=torch.long, device=shared.device)
                input_ids = torch.cat([prefix.expand(len(inputs["input_ids"]), -1), inputs["input_ids"]], dim=1)
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=inputs["attention_mask"],
                    cache=inputs.get("cache"),
                    logits_processor=LogitsProcessorList([processor]),
                    max_new_tokens=self.max_answer_length,
                    do_sample=False,
                    num_beams=1,
                    num_return_sequences=1,
                    pad_token_id=pad,
                    eos_token_id=list(self.tokens.stop),
                )
                answers += out[:, input_ids.shape[1] :].tolist()
        finally:
            self.model.train(was_training)
        return answers

    def _as_result(self, generated: list[int]) -> dict:
        stop = set(self.tokens.stop)
        end = next((i for i, token in enumerate(generated) if token in stop), len(generated))
        ids = self.verbalizer.parse(self.tokenizer.decode(generated[:end], skip_special_tokens=True))
        names = [self.verbalizer.labels[i] for i in ids]
        return {"labels": names} if self.tokens.multi_label else {"label": names[0]}

    # --- persistence -------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Model (or adapter), tokenizer, verbalizer and prompt: everything `from_pretrained` needs."""
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        self.save_settings(directory)

    def save_settings(self, directory: str | os.PathLike) -> None:
        self.verbalizer.save_pretrained(directory)
        with open(os.path.join(directory, PROMPT_FILE), "w", encoding="utf-8") as file:
            json.dump({**asdict(self.prompt), "max_length": self.max_length,
                       "decision_thresholds": self.decision_thresholds}, file, indent=2, ensure_ascii=False)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **model_kwargs) -> "InstructionClassifier":
        """Load a folder or Hub repo saved by `save_pretrained` or `InstructionTrainer.save_model` (adapter or
        merged). Hub options (`revision`, `cache_dir`, `token`, `local_files_only`) apply to every file."""
        hub = {key: model_kwargs[key] for key in HUB_OPTIONS if key in model_kwargs}
        path = cached_file(directory, PROMPT_FILE, _raise_exceptions_for_missing_entries=False, **hub)
        if path is None:
            raise FileNotFoundError(f"No {PROMPT_FILE} in {directory}: not an instruction classifier folder or repo.")
        with open(path, encoding="utf-8") as file:
            settings = json.load(file)
        max_length = settings.pop("max_length", None)
        thresholds = settings.pop("decision_thresholds", None)
        if cached_file(directory, ADAPTER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False, **hub):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(directory, **model_kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(directory, **model_kwargs)
        # The model's config, given here, tells the tokenizer class: an adapter repo has no config.json of its own.
        tokenizer = AutoTokenizer.from_pretrained(directory, config=model.config, **hub)
        verbalizer = Verbalizer.from_pretrained(directory, **hub)
        return cls(model, tokenizer, InstructionPrompt(**settings), verbalizer, max_length, thresholds)

