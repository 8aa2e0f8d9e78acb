"""One loader for a saved classifier of either approach, from a folder or a Hub repo id, with one result format.

    from hf_clf_ext import TextClassifier

    classifier = TextClassifier.from_pretrained("outputs/smollm2-135m-bbc-last-token")  # or a Hub repo id
    classifier.classify(["Shares rose after the results."])
    # [{"label": "business", "score": 0.97, "probabilities": {"business": 0.97, ...}}]

Results, in input order: single-label `{"label", "score", "probabilities"}`, multi-label `{"labels",
"probabilities"}`. `compile=True` (loader or `classify`) runs a last-token classifier through its `torch.compile`d
forward (`hf_clf_ext.last_token.compiled`); the default compiles long jobs where that pays. An instruction classifier's
constrained decoding (`method="generate"`, its default) names labels without probabilities, so its results hold
`"label"` / `"labels"` only; `method="score"` adds them. A TF-IDF student (`hf-clf distill`) loads and classifies the
same way.
"""

import json
import os
from collections.abc import Sequence

from transformers.utils import CONFIG_NAME, cached_file

from .distillation import tfidf
from .export import ONNX_FACTS_FILE
from .last_token.configuration_last_token import LastTokenClassifierConfig
from .instruction.classifier import HARD_LABEL_METHODS, HUB_OPTIONS, METHODS, PROMPT_FILE, InstructionClassifier
from .engines import check_engine, load_engine
from .labels import results_from_probabilities
from .texts import check_batch_size, check_texts

MODEL_TYPE = LastTokenClassifierConfig.model_type


class TextClassifier:
    """A last-token or instruction classifier behind one `classify`.

    Attributes:
        approach: `"last_token"` (also a stock `*ForSequenceClassification`), `"instruction"` or `"tfidf"`.
        name_or_path: the folder or repo id it was loaded from.
        labels: class names in id order. multi_label: whether answers name several labels.
        thresholds: the multi-label decision thresholds it applies (one per label), or None; set them to decide
            otherwise, on every path (written where that path reads them: the model's config, the TF-IDF model, the
            instruction classifier).
        compile: whether `classify` compiles the forward: True, False or None (where it pays; see `classify_texts`).
        engine: None where the forward runs in torch here, else the engine running it (`hf_clf_ext.engines`).
        model, tokenizer: the loaded model and tokenizer (an instruction classifier's are `self.instruction.model`;
            a TF-IDF student's model is its `TfidfClassifier`, without tokenizer).
    """

    def __init__(self, approach: str, labels: Sequence[str], multi_label: bool, thresholds, model=None, tokenizer=None,
                 instruction=None, name_or_path: str | None = None, compile: bool | None = None, engine=None):
        self.approach, self.labels, self.multi_label = approach, list(labels), multi_label
        self.model, self.tokenizer, self.instruction = model, tokenizer, instruction
        self.name_or_path = name_or_path
        self.engine = engine
        self.thresholds = thresholds
        self.compile = self._check_compile(compile)

    @property
    def thresholds(self) -> list[float] | None:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values) -> None:
        values = None if values is None else [float(value) for value in values]
        if values is not None and (not self.multi_label or len(values) != len(self.labels)):
            raise ValueError(f"thresholds are one per label of a multi-label classifier ({len(self.labels)} labels, "
                             f"multi_label={self.multi_label}), got {values}.")
        self._thresholds = values
        if not self.multi_label:
            return
        if self.approach == "instruction":
            self.instruction.decision_thresholds = values
        elif self.approach == "tfidf":
            self.model.decision_thresholds = values
        elif self.engine is None and self.model is not None:  # classify_texts reads the config
            self.model.config.decision_thresholds = values

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, compile: bool | None = None, engine: str | None = None,
                        vllm_python: str | None = None, vllm_options: dict | None = None,
                        **kwargs) -> "TextClassifier":
        """Load a folder or Hub repo saved by either trainer, or an ONNX export. `compile`: `classify`'s default (see
        the class). `kwargs` go to the model's `from_pretrained` (e.g. `dtype`, `device_map`); Hub options
        (`revision`, `cache_dir`, `token`, `local_files_only`) apply to every file. `engine`: where the forward runs
        (`hf_clf_ext.engines`): by default onnxruntime for an ONNX export and torch, in this process, otherwise;
        `"vllm"` runs a last-token classifier's stock export in vLLM, started with `vllm_python` (default
        `$HF_CLF_EXT_VLLM_PYTHON`), `vllm_options` going to vLLM's `LLM` (e.g. `dtype`, `tensor_parallel_size`)."""
        name_or_path = str(name_or_path)
        check_engine(engine)
        if engine != "vllm" and (vllm_python or vllm_options):
            raise ValueError("vllm_python / vllm_options apply to engine='vllm' only.")
        hub = {key: kwargs[key] for key in HUB_OPTIONS if key in kwargs}
        approach = saved_approach(name_or_path, **hub)
        if approach == "onnx" or engine not in (None, "torch"):
            if compile:
                raise ValueError(f"compile=True compiles the torch engine's forward; {name_or_path} runs on "
                                 f"{engine or 'onnxruntime'}, which compiles its own.")
            served = load_engine(name_or_path, approach, engine, hub=hub, vllm_python=vllm_python,
                                 vllm_options=vllm_options,
                                 load_kwargs={k: v for k, v in kwargs.items() if k not in HUB_OPTIONS})
            return cls("last_token", served.labels, served.multi_label, served.thresholds, tokenizer=served.tokenizer,
                       name_or_path=name_or_path, engine=served)
        if approach == "instruction":
            instruction = InstructionClassifier.from_pretrained(name_or_path, **kwargs)
            verbalizer = instruction.verbalizer
            return cls("instruction", verbalizer.labels, verbalizer.multi_label, instruction.decision_thresholds,
                       instruction=instruction, name_or_path=name_or_path, compile=compile)
        if approach == "tfidf":
            model = tfidf.TfidfClassifier.from_pretrained(name_or_path, **hub)
            return cls("tfidf", model.labels, model.multi_label, model.decision_thresholds, model=model,
                       name_or_path=name_or_path, compile=compile)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        multi_label = model.config.problem_type == "multi_label_classification"
        thresholds = getattr(model.config, "decision_thresholds", None) if multi_label else None
        return cls("last_token", names, multi_label, thresholds, model=model, tokenizer=tokenizer,
                   name_or_path=name_or_path, compile=compile)

    @property
    def engine_name(self) -> str:
        """`"torch"` or the engine's name (`"vllm"`, `"onnxruntime"`)."""
        return "torch" if self.engine is None else self.engine.name

    def close(self) -> None:
        """Stop the engine's worker, if any (it also stops when the classifier is collected or the process exits)."""
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> "TextClassifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def methods(self) -> tuple[str, ...]:
        """The ways it can classify, the default first."""
        return METHODS if self.approach == "instruction" else ("forward",)

    @property
    def names_at_least_one(self) -> bool:
        """Whether its multi-label results always name a label, the most probable where none reaches its threshold:
        an instruction classifier's rule (its decoding cannot answer with none, and its scoring follows it)."""
        return self.approach == "instruction"

    def gives_probabilities(self, method: str | None = None) -> bool:
        """Whether `classify(texts, method)` returns probabilities (calibration metrics apply) or labels only."""
        return self._method(method) not in HARD_LABEL_METHODS

    def classify(self, texts: Sequence[str], method: str | None = None, batch_size: int = 16,
                 compile: bool | None = None) -> list[dict]:
        """Results for `texts` in input order (see the module docstring). `method`: an instruction classifier's
        `"generate"` (constrained decoding, the default) or `"score"` (label probabilities). `compile`: overrides
        the loader's setting for this call."""
        method = self._method(method)
        check_batch_size(batch_size)
        compile = self._check_compile(self.compile if compile is None else compile)
        if self.approach == "instruction":
            return self.instruction.classify(texts, method=method, batch_size=batch_size)
        if self.approach == "tfidf":
            return self.model.classify(texts)
        if self.engine is not None:
            # normalised as training normalised them
            probabilities = self.engine.probabilities(check_texts(texts), batch_size)
            return results_from_probabilities(probabilities, self.labels, self.multi_label, self.thresholds)
        from .last_token.inference import classify_texts

        return classify_texts(self.model, self.tokenizer, texts, batch_size=batch_size,
                             compile=compile)

    def _check_compile(self, compile: bool | None) -> bool | None:
        if compile and self.approach != "last_token":
            raise ValueError(
                f"compile=True applies to last-token classifiers and their stock exports; {self.name_or_path} is "
                f"{'an' if self.approach == 'instruction' else 'a'} {self.approach} classifier, which runs eagerly."
            )
        return compile

    def _method(self, method: str | None) -> str:
        if method is None:
            return self.methods[0]
        if method not in self.methods:
            raise ValueError(
                f"A {self.approach} classifier classifies with {' or '.join(map(repr, self.methods))}, not {method!r}."
            )
        return method


def approach_files() -> tuple[tuple[str, str], ...]:
    """The files that make a folder a classifier of an approach, in the order `saved_approach` looks for them (a
    folder with none of them is a `config.json` model: `"last_token"` or `"stock"`)."""
    return ((PROMPT_FILE, "instruction"), (ONNX_FACTS_FILE, "onnx"), (tfidf.SETTINGS_FILE, "tfidf"))


def check_nothing_loads_instead(folder, approach: str) -> None:
    """An error if `folder` holds files of another classifier that `saved_approach` reads before those of a
    classifier of `approach` (`"last_token"` for any `config.json` model) about to be saved there: the folder would
    load as the old one. Refused, not deleted: they may be the user's."""
    files = approach_files()
    own = next((i for i, (_, kind) in enumerate(files) if kind == approach), len(files))
    found = [name for name, _ in files[:own] if os.path.isfile(os.path.join(folder, name))]
    if found:
        raise ValueError(
            f"{folder} holds {', '.join(found)} of another classifier, which TextClassifier.from_pretrained would "
            f"load instead of the {approach} model this run saves there: choose another output_dir, or remove the old "
            "classifier's files."
        )


def saved_approach(name_or_path: str, **hub) -> str:
    """`"instruction"`, `"tfidf"`, `"onnx"` (`export.export_onnx`), `"last_token"` or `"stock"` (any
    `*ForSequenceClassification`, e.g. our stock export or a sequence-classification student) for a folder or Hub repo
    id, read from its small files before any weights load; otherwise an error saying what it is instead
    (a missing folder, a plain causal LM, ...). `hub`: `revision`, `cache_dir`, `token`, `local_files_only`."""
    name_or_path = str(name_or_path)
    if not os.path.isdir(name_or_path):
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(name_or_path)
        except HFValidationError:
            raise FileNotFoundError(
                f"{name_or_path} is neither a folder nor a Hub repo id (no such folder)."
            ) from None

    def find(filename):
        try:
            return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub)
        except OSError as error:  # an unknown repo, no network and no cached copy, ...
            raise OSError(f"{name_or_path} is no local folder, and as a Hub repo it could not be read: "
                          f"{error}") from None

    for filename, approach in approach_files():
        if find(filename) is not None:
            return approach
    config_file = find(CONFIG_NAME)
    if config_file is None:
        raise FileNotFoundError(
            f"{name_or_path} holds neither a classifier config ({CONFIG_NAME}), instruction settings "
            f"({PROMPT_FILE}) nor a TF-IDF student ({tfidf.SETTINGS_FILE}): it is not a folder or repo saved by "
            "hf-clf-ext."
        )
    with open(config_file, encoding="utf-8") as file:
        config = json.load(file)
    architectures = config.get("architectures") or []
    if config.get("model_type") == MODEL_TYPE:
        return "last_token"
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(
            f"{name_or_path} is not a sequence classifier (model_type {config.get('model_type')!r}, architectures "
            f"{architectures}): load a folder or repo saved by hf-clf-ext, or its stock export."
        )
    return "stock"
