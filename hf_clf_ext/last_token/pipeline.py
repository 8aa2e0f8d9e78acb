"""`pipeline("text-classification")` with the defaults a last-token classifier needs.

Registered for the task on `import hf_clf_ext`; for every other model it behaves exactly as transformers' own
`TextClassificationPipeline`, which it subclasses.
"""

import numpy as np
from transformers import TextClassificationPipeline
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_last_token import LastTokenClassifierConfig
from ..labels import decide
from ..texts import normalize_text

TASK = "text-classification"


class LastTokenClassificationPipeline(TextClassificationPipeline):
    """For a classifier this package wrote (a last-token classifier, its stock export, a stock distillation
    student): texts are normalised as in training (`texts.normalize_text`) and truncated to the trained length (the
    saved tokenizer's `model_max_length`), as in training and `classify_texts`, unless `truncation=` says otherwise;
    and a multi-label model returns, by default, the labels whose probability reaches their tuned decision threshold
    (sorted by score; `top_k=` gives scores without a decision, as the stock pipeline does). Without this package,
    transformers' own pipeline serves the stock kinds the top label."""

    def _ours(self) -> bool:
        config = self.model.config
        # A stock export or a stock student records the temperature it folded into its head.
        return isinstance(config, LastTokenClassifierConfig) or getattr(config, "temperature_folded", None) is not None

    def _sanitize_parameters(self, function_to_apply=None, top_k="", **tokenizer_kwargs):
        if self._ours():
            tokenizer_kwargs.setdefault("truncation", True)
        return super()._sanitize_parameters(function_to_apply=function_to_apply, top_k=top_k, **tokenizer_kwargs)

    def preprocess(self, inputs, **tokenizer_kwargs):
        if self._ours() and isinstance(inputs, str):
            inputs = normalize_text(inputs)  # as training normalised it (the saved tokenizer strips too)
        return super().preprocess(inputs, **tokenizer_kwargs)

    def __call__(self, inputs, **kwargs):
        config = self.model.config
        asked_for_scores = "top_k" in kwargs or "top_k" in self._postprocess_params
        if not self._ours() or config.problem_type != "multi_label_classification" or asked_for_scores:
            return super().__call__(inputs, **kwargs)
        names = [config.id2label[i] for i in range(config.num_labels)]
        thresholds = getattr(config, "decision_thresholds", None)
        results = super().__call__(inputs, top_k=None, **kwargs)

        def named(rows):  # the labels `labels.decide` names from these scores, kept in the pipeline's score order
            scores = {row["label"]: row["score"] for row in rows}
            hits = decide(np.array([[scores[name] for name in names]]), True, thresholds)[0]
            chosen = {name for name, hit in zip(names, hits) if hit}
            return [row for row in rows if row["label"] in chosen]

        return named(results) if isinstance(inputs, str) else [named(rows) for rows in results]


def register() -> None:
    """Serve the task with this subclass, keeping the task's model classes and default checkpoint."""
    task = PIPELINE_REGISTRY.supported_tasks[TASK]
    PIPELINE_REGISTRY.supported_tasks[TASK] = {**task, "impl": LastTokenClassificationPipeline}
