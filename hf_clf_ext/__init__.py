"""Fine-tune decoder-only LLMs into text classifiers.

Importing the package registers the last-token classifier with `AutoConfig` and
`AutoModelForSequenceClassification`, so saved models load (and run in `pipeline("text-classification")`) through
the Auto classes. Everything else loads on first use, so that prediction imports what prediction needs: the
trainers (TRL, PEFT, datasets, evaluate, scikit-learn, matplotlib) only when a trainer is asked for.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

from transformers import AutoConfig, AutoModelForSequenceClassification

from .last_token.configuration_last_token import LastTokenClassifierConfig
from .last_token.modeling_last_token import LastTokenClassifierForSequenceClassification, pool_hidden_states
from .last_token.pipeline import LastTokenClassificationPipeline
from .last_token.pipeline import register as register_pipeline

AutoConfig.register(LastTokenClassifierConfig.model_type, LastTokenClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    LastTokenClassifierConfig, LastTokenClassifierForSequenceClassification, exist_ok=True
)
register_pipeline()

_LAZY = {
    "DistillationConfig": "distillation.config",
    "InstructionClassifier": "instruction.classifier",
    "InstructionConfig": "instruction.config",
    "InstructionPrompt": "instruction.classifier",
    "InstructionTrainer": "instruction.trainer",
    "LabelTokens": "instruction.verbalizer",
    "LastTokenConfig": "last_token.config",
    "LastTokenDistillationTrainer": "distillation.trainer",
    "LastTokenTrainer": "last_token.trainer",
    "TextClassifier": "classifier",
    "TfidfClassifier": "distillation.tfidf",
    "Verbalizer": "instruction.verbalizer",
    "VerbalizerLogitsProcessor": "instruction.logits_process",
    "label_pool": "distillation.teacher_labels",
    "predict_file": "batch",
    "classify_texts": "last_token.inference",
    "score_labels": "instruction.scoring",
}
# Round-2 names, kept working: each warns once (FutureWarning) and gives the new object.
DEPRECATED_NAMES = {
    "LastTokenClassifierTrainer": "LastTokenTrainer",
    "LastTokenClassifierTrainingArguments": "LastTokenConfig",
    "InstructionSFTRecipe": "InstructionTrainer",
    "InstructionSFTConfig": "InstructionConfig",
    "predict_texts": "classify_texts",  # one verb, `classify`, for every classifier
}
# Round-2 module paths (one flat folder), kept importable: `hf_clf_ext.last_token_config` is
# `hf_clf_ext.last_token.config`.
DEPRECATED_MODULES = {
    "configuration_last_token": "last_token.configuration_last_token",
    "modeling_last_token": "last_token.modeling_last_token",
    "last_token_config": "last_token.config",
    "last_token_trainer": "last_token.trainer",
    "inference": "last_token.inference",
    "compiled": "last_token.compiled",
    "pipeline": "last_token.pipeline",
    "verbalizer": "instruction.verbalizer",
    "logits_process": "instruction.logits_process",
    "scoring": "instruction.scoring",
    "prompt_cache": "instruction.prompt_cache",
    "instruction_config": "instruction.config",
    "instruction_trainer": "instruction.trainer",
    "distill_config": "distillation.config",
    "distill_trainer": "distillation.trainer",
    "pool_labels": "distillation.teacher_labels",
    "tfidf": "distillation.tfidf",
    "saving": "hub",
    "model_card": "cards.model_card",
    "data": "labels",
}

__all__ = [
    "LastTokenClassificationPipeline",
    "LastTokenClassifierConfig",
    "LastTokenClassifierForSequenceClassification",
    "pool_hidden_states",
    *_LAZY,
]


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"hf_clf_ext: {old} is now {new}; the old name will be removed in a later release.", FutureWarning,
                  stacklevel=3)


def __getattr__(name: str):
    if name in DEPRECATED_NAMES:
        new = DEPRECATED_NAMES[name]
        _deprecated(name, new)
        value = getattr(sys.modules[__name__], new)
        globals()[name] = value  # warned once
        return value
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import hf_clf_ext.<round-2 module>` gives a view of the module where it lives now, warning once."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in DEPRECATED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name.rpartition(".")[2]
        new = f"{__name__}.{DEPRECATED_MODULES[old]}"
        _deprecated(spec.name, new)
        target = importlib.import_module(new)
        # `data` held text functions too (build_texts, tokenize_texts, ...): they live in `texts` now.
        extra = importlib.import_module(f"{__name__}.texts") if old == "data" else target
        module = types.ModuleType(spec.name, target.__doc__)

        def attribute(name):  # round-2 names too: `from hf_clf_ext.last_token_config import LastTokenClassifier...`
            name = DEPRECATED_NAMES.get(name, name)
            return getattr(target, name) if hasattr(target, name) else getattr(extra, name)

        module.__getattr__ = attribute
        module.__dir__ = lambda: sorted(set(dir(target)) | set(dir(extra)))
        return module

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
