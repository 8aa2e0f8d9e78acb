"""Fine-tune decoder-only LLMs into text classifiers.

Importing the package registers the last-token classifier with `AutoConfig` and
`AutoModelForSequenceClassification`, so saved models load (and run in `pipeline("text-classification")`) through
the Auto classes.
"""

from transformers import AutoConfig, AutoModelForSequenceClassification

from .configuration_last_token import LastTokenClassifierConfig
from .inference import predict_texts
from .last_token_config import LastTokenClassifierTrainingArguments
from .last_token_trainer import LastTokenClassifierTrainer
from .modeling_last_token import LastTokenClassifierForSequenceClassification, pool_hidden_states

AutoConfig.register(LastTokenClassifierConfig.model_type, LastTokenClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    LastTokenClassifierConfig, LastTokenClassifierForSequenceClassification, exist_ok=True
)

__all__ = [
    "LastTokenClassifierConfig",
    "LastTokenClassifierForSequenceClassification",
    "LastTokenClassifierTrainer",
    "LastTokenClassifierTrainingArguments",
    "pool_hidden_states",
    "predict_texts",
]
