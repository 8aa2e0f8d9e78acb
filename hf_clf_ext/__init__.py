"""Fine-tune decoder-only LLMs into text classifiers.

Importing the package registers the last-token classifier with `AutoConfig` and
`AutoModelForSequenceClassification`, so saved models load (and run in `pipeline("text-classification")`) through
the Auto classes.
"""

from transformers import AutoConfig, AutoModelForSequenceClassification

from .configuration_last_token import LastTokenClassifierConfig
from .inference import predict_texts
from .instruction import InstructionClassifier, InstructionPrompt
from .instruction_config import InstructionSFTConfig
from .instruction_trainer import InstructionSFTRecipe
from .last_token_config import LastTokenClassifierTrainingArguments
from .last_token_trainer import LastTokenClassifierTrainer
from .logits_process import VerbalizerLogitsProcessor
from .pipeline import LastTokenClassificationPipeline
from .pipeline import register as register_pipeline
from .modeling_last_token import LastTokenClassifierForSequenceClassification, pool_hidden_states
from .scoring import score_labels
from .verbalizer import LabelTokens, Verbalizer

AutoConfig.register(LastTokenClassifierConfig.model_type, LastTokenClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    LastTokenClassifierConfig, LastTokenClassifierForSequenceClassification, exist_ok=True
)
register_pipeline()

__all__ = [
    "InstructionClassifier",
    "InstructionPrompt",
    "InstructionSFTConfig",
    "InstructionSFTRecipe",
    "LastTokenClassificationPipeline",
    "LabelTokens",
    "LastTokenClassifierConfig",
    "LastTokenClassifierForSequenceClassification",
    "LastTokenClassifierTrainer",
    "LastTokenClassifierTrainingArguments",
    "Verbalizer",
    "VerbalizerLogitsProcessor",
    "pool_hidden_states",
    "predict_texts",
    "score_labels",
]
