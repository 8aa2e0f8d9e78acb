"""Fine-tune decoder-only LLMs into text classifiers.

Importing the package registers the last-token classifier with `AutoConfig` and
`AutoModelForSequenceClassification`, so saved models load (and run in `pipeline("text-classification")`) through
the Auto classes. Everything else loads on first use, so that prediction imports what prediction needs: the
trainers (TRL, PEFT, datasets, evaluate, scikit-learn, matplotlib) only when a trainer is asked for.
"""

import importlib

from transformers import AutoConfig, AutoModelForSequenceClassification

from .configuration_last_token import LastTokenClassifierConfig
from .modeling_last_token import LastTokenClassifierForSequenceClassification, pool_hidden_states
from .pipeline import LastTokenClassificationPipeline
from .pipeline import register as register_pipeline

AutoConfig.register(LastTokenClassifierConfig.model_type, LastTokenClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    LastTokenClassifierConfig, LastTokenClassifierForSequenceClassification, exist_ok=True
)
register_pipeline()

_LAZY = {
    "DistillationConfig": "distill_config",
    "InstructionClassifier": "instruction",
    "InstructionPrompt": "instruction",
    "InstructionSFTConfig": "instruction_config",
    "InstructionSFTRecipe": "instruction_trainer",
    "LabelTokens": "verbalizer",
    "LastTokenDistillationTrainer": "distill_trainer",
    "LastTokenClassifierTrainer": "last_token_trainer",
    "LastTokenClassifierTrainingArguments": "last_token_config",
    "TextClassifier": "classifier",
    "TfidfClassifier": "tfidf",
    "Verbalizer": "verbalizer",
    "VerbalizerLogitsProcessor": "logits_process",
    "label_pool": "pool_labels",
    "predict_texts": "inference",
    "score_labels": "scoring",
}

__all__ = [
    "LastTokenClassificationPipeline",
    "LastTokenClassifierConfig",
    "LastTokenClassifierForSequenceClassification",
    "pool_hidden_states",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
