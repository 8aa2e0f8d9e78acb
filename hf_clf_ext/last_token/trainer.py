"""`LastTokenTrainer`: fine-tune a causal LM as a last-token classifier, with (Q)LoRA, the paper's
defaults, offline metrics, early stopping and post-hoc calibration.

Like TRL's trainers it takes a model name/path or object plus a `peft_config`, and prepares the raw dataset itself.
"""

import copy
import dataclasses
import functools
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import PeftConfig, PeftModel
from transformers import (DataCollatorWithPadding, EarlyStoppingCallback, PreTrainedModel, PreTrainedTokenizerBase,
                          Trainer)
from transformers.dynamic_module_utils import custom_object_save
from transformers.trainer import TRAINING_ARGS_NAME

from ..arguments import first_split, name_best_metric_for_eval_sets
from ..calibration import calibrate_logits
from ..labels import decide, encode_split
from ..streaming import StreamedRows, any_stream, is_stream, tokenized_stream
from ..texts import add_strip_normalizer, build_texts, load_tokenizer, set_truncation, suffix_ids, tokenize_texts
from .inference import classify_texts
from .config import LastTokenConfig
from ..metrics import build_compute_metrics, load_metric, probabilities_from_logits
from ..cards.model_card import EvaluationFacts
from .losses import balanced_class_weights, focal_loss  # noqa: F401 (also importable from here, as before)
from .adapters import (classification_peft_config, default_lora_config, is_head_parameter, prepare_peft,
                       unwrap_classifier)
from .modeling_last_token import ADAPTER_SUBFOLDER, LastTokenClassifierForSequenceClassification
from ..hub import check_not_source
from ..trainer_base import AdaptationFacts, ClassifierTrainerMixin, deprecated_alias

logger = logging.getLogger(__name__)


class LastTokenTrainer(ClassifierTrainerMixin, Trainer):
    """Fine-tunes a [`LastTokenClassifierForSequenceClassification`]
    [hf_clf_ext.last_token.modeling_last_token.LastTokenClassifierForSequenceClassification] on raw rows of text
    and labels.

    Args:
        model: a causal-LM name/path (built with `from_backbone`, quantized as `args.quantization` says) or a model
            object (a causal LM to wrap, or an existing last-token classifier).
        args: [`LastTokenConfig`][hf_clf_ext.last_token.config.LastTokenConfig].
        train_dataset: a `datasets.Dataset` with `args.text_columns` and `args.label_column`.
        eval_dataset: the same (or a dict of them: metrics per set).
        processing_class: the tokenizer (loaded from `model` when it is a name/path).
        peft_config: a PEFT config; defaults to LoRA from `args` (`lora_r`, `lora_alpha`, ...), head trained and saved.
        labels: class names in id order, when the label column holds ids without a `ClassLabel` feature.
        model_init_kwargs: extra `from_pretrained` options for the backbone (`dtype`, `attn_implementation`,
            `gguf_file`, `device_map`, ...).
    """

    _tag_names = ["hf-clf-ext", "last-token-classifier"]
    card_template = "last_token"
    # Read once, by __init__ (data, suffix room, callbacks): a search's `fresh_model` cannot vary them.
    prepared_once = ("label_column", "text_columns", "text_template", "drop_unknown_labels", "max_length",
                     "truncation_side", "pooling_suffix", "early_stopping_patience")

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: LastTokenConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        labels: Sequence[str] | None = None,
        model_init_kwargs: dict | None = None,
        compute_metrics=None,
        callbacks=None,
        **kwargs,
    ):
        if args is None:
            args = LastTokenConfig(output_dir="last-token-classifier")
        model_init_kwargs = dict(model_init_kwargs or {})
        if any_stream(eval_dataset):
            raise ValueError("The evaluation data is a stream: evaluation reads its data several times, so give a "
                             "Dataset (a stream, an IterableDataset, trains only).")
        self._setup(model, args, train_dataset, labels, model_init_kwargs)
        if eval_dataset is None and args.eval_strategy != "no":
            logger.warning("No eval_dataset: evaluation, early stopping, best-model selection and calibration are "
                           "off.")
            args = dataclasses.replace(args, eval_strategy="no", load_best_model_at_end=False, calibrate=False)
        tokenizer = processing_class or load_tokenizer(model, model_init_kwargs.get("gguf_file"))

        train_labels = None  # a stream is read for its labels only where balanced class weights need them
        if not is_stream(train_dataset) or args.class_weights == "balanced":
            _, train_labels = encode_split(train_dataset, args.label_column, self.label_space, split="training")
        source = model
        self._rebuild = None
        if isinstance(model, (str, os.PathLike)):  # a merged save under FSDP rebuilds the model whole
            self._rebuild = functools.partial(self._build_model, model, args, tokenizer, train_labels,
                                                    dict(model_init_kwargs), peft_config)
        model = self._build_model(model, args, tokenizer, train_labels, model_init_kwargs, peft_config)
        classifier = unwrap_classifier(model)
        self._record_base_revision(source, model, model_init_kwargs)
        self._pin_adapter_revision(model)
        self._check_context(classifier, args)
        reserve = len(classifier.config.suffix_token_ids or [])
        # `pipeline(..., truncation=True)` then cuts texts exactly as training did.
        set_truncation(tokenizer, args.max_length - reserve, args.truncation_side)
        # Texts are stripped before tokenizing (data.build_texts, texts.check_texts); the saved tokenizer strips too,
        # so plain transformers users (`pipeline()`, AutoTokenizer) of the model see the same tokens.
        tokenizer = add_strip_normalizer(tokenizer)

        self.truncated: dict[str, int] = {}  # rows cut to max_length, per split (for the model card)
        self._streamed = StreamedRows(len(self.label_space.names), reserve) if is_stream(train_dataset) else None
        train, self.train_texts = self._prepare_dataset(train_dataset, tokenizer, args, reserve, "training")
        evaluation = None
        name_best_metric_for_eval_sets(args, eval_dataset)
        if isinstance(eval_dataset, dict):
            evaluation = {
                name: self._prepare_dataset(split, tokenizer, args, reserve, f"evaluation ({name})")[0]
                for name, split in eval_dataset.items()
            }
        elif eval_dataset is not None:
            evaluation, _ = self._prepare_dataset(eval_dataset, tokenizer, args, reserve, "evaluation")

        self._default_metrics = compute_metrics is None
        if compute_metrics is None:
            compute_metrics = build_compute_metrics(self.label_space.problem_type, self.label_space.id2label)
        callbacks = list(callbacks or [])
        if evaluation is not None and args.early_stopping_patience and args.eval_strategy != "no":
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
        super().__init__(
            model=model,
            args=args,
            data_collator=DataCollatorWithPadding(tokenizer),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            **kwargs,
        )
        # Label smoothing lives in the model's loss (it must not reach multi-label targets through Trainer's smoother).
        self.label_smoother = None
        self.calibration_results: dict | None = None

    # --- model -------------------------------------------------------------------------------------------------------

    def fresh_model(self):
        """The classifier built again from `self.args` as they are now (a new head, and a new LoRA of the current
        `lora_r` / `lora_alpha` / `lora_dropout`): what each trial of a hyperparameter search trains
        (`hf_clf_ext.tuning`). Needs the model given by name or path. The default metrics go back to 0.5: the
        thresholds the last model's calibration tuned on the validation split are not the new model's."""
        if self._rebuild is None:
            raise ValueError("fresh_model rebuilds the classifier from its name or path; this trainer was given a "
                             "model object.")
        if self._default_metrics:
            self.compute_metrics = build_compute_metrics(self.label_space.problem_type, self.label_space.id2label)
        model, _, tokenizer, train_labels, model_init_kwargs, peft_config = self._rebuild.args
        return self._build_model(model, self.args, tokenizer, train_labels, dict(model_init_kwargs), peft_config)

    def _build_model(self, model, args, tokenizer, train_labels, model_init_kwargs, peft_config):
        space = self.label_space
        class_weights = None
        if args.class_weights == "balanced":
            class_weights = balanced_class_weights(train_labels, space)
        elif args.class_weights:
            class_weights = args.class_weight_values()
        label_smoothing = args.label_smoothing_factor if not space.multi_label else 0.0
        if isinstance(model, LastTokenClassifierForSequenceClassification) or isinstance(model, PeftModel):
            classifier = unwrap_classifier(model)
            if list(classifier.config.id2label.values()) != list(space.names):
                raise ValueError(
                    f"The model's labels {list(classifier.config.id2label.values())} differ from the training "
                    f"data's {list(space.names)}: pass labels=[...] in the model's order."
                )
            if args.head_init != "random":
                raise ValueError(f"head_init={args.head_init!r} starts a new head, but the model given is already a "
                                 "classifier with a trained head: pass the backbone's name or path, or use "
                                 "head_init='random'.")
            if class_weights is not None:
                classifier.config.class_weights = class_weights
            if label_smoothing:
                classifier.config.label_smoothing = label_smoothing
        else:
            quantization_config = args.bnb_config()
            if quantization_config is not None:
                model_init_kwargs.setdefault("quantization_config", quantization_config)
            model_init_kwargs = args.with_sharded_dtype(model_init_kwargs)
            source = model if isinstance(model, (str, os.PathLike)) else None
            model = LastTokenClassifierForSequenceClassification.from_backbone(
                model,
                labels=list(space.names),
                problem_type=space.problem_type,
                pooling=args.pooling,
                tokenizer=tokenizer,
                classifier_dropout=args.classifier_dropout,
                label_smoothing=label_smoothing,
                class_weights=class_weights,
                head_bias=args.head_bias,
                **(model_init_kwargs if isinstance(model, (str, os.PathLike)) else {}),
            )
            if args.pooling_suffix:
                model.config.suffix_token_ids = suffix_ids(tokenizer, args.pooling_suffix)
                model.config.pooling_suffix = args.pooling_suffix
            if args.head_init == "label_names":
                from .head_init import init_head_from_label_names

                init_head_from_label_names(model, tokenizer, list(space.names), source, **model_init_kwargs)
        if isinstance(model, PeftModel) or not args.use_peft:
            return model
        peft_config = classification_peft_config(peft_config) if peft_config else default_lora_config(args)
        return prepare_peft(model, args, peft_config)

    @staticmethod
    def _check_context(classifier, args):
        limit = getattr(classifier.config.text_config.get_text_config(), "max_position_embeddings", None)
        if limit is not None and args.max_length > limit:
            raise ValueError(f"max_length={args.max_length} exceeds the backbone's context of {limit} tokens.")

    # --- data --------------------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset: Dataset, tokenizer, args, reserve: int, split: str) -> tuple[Dataset, list]:
        """Tokenized rows with encoded `labels`, and the texts they were built from (a stream: tokenized as training
        reads it, no texts kept)."""
        if is_stream(dataset):  # the training data (evaluation streams are refused before a model loads)
            return tokenized_stream(dataset, self.label_space, tokenizer, args, reserve), None
        dataset, labels = encode_split(
            dataset, args.label_column, self.label_space, drop_unknown=args.drop_unknown_labels, split=split
        )
        texts = build_texts(dataset, args.text_columns, args.text_template, split)
        encoded, self.truncated[split] = tokenize_texts(
            texts, tokenizer, args.max_length, truncation_side=args.truncation_side, reserve=reserve
        )
        return Dataset.from_dict({**encoded, "labels": labels}), texts

    # --- optimisation ------------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """Two learning rates: `learning_rate` for the adapters, `head_learning_rate` for the new head."""
        if self.optimizer is not None or self.args.head_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((is_head_parameter(name), name in decay), []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                "lr": self.args.head_learning_rate if is_head else self.args.learning_rate,
            }
            for (is_head, decays), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._streamed is not None:  # the card's facts about streamed rows, counted as they are trained on
            self._streamed.add(inputs, self.processing_class)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.loss != "focal":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        config = unwrap_classifier(model).config
        weights = None
        if config.class_weights is not None:
            weights = torch.tensor(config.class_weights, dtype=outputs.logits.dtype, device=outputs.logits.device)
        loss = focal_loss(outputs.logits, labels, self.label_space.multi_label, self.args.focal_gamma, weights)
        return (loss, outputs) if return_outputs else loss

    # --- after training ----------------------------------------------------------------------------------------------

    def _after_training(self) -> None:
        """Calibrate (which evaluates for the card) when `args.calibrate` is set, else evaluate for the card."""
        if self._streamed is not None:  # every process counted its own batches
            self._streamed = StreamedRows.combine(gather_object([self._streamed]))
        if self.args.calibrate and self.eval_dataset is not None:
            self.calibrate()
        else:
            self._refresh_card_evaluation()

    def _refresh_card_evaluation(self) -> None:
        """Evaluate for the model card now, on every process (prediction is collective under DDP); the card itself
        is written by the main process alone, e.g. inside `push_to_hub`."""
        evaluation = first_split(self.eval_dataset)
        self._card_evaluation = self._predict_facts(evaluation)[0] if evaluation is not None else None

    def calibrate(self, eval_dataset: Dataset | None = None) -> dict:
        """Fit temperature scaling (and multi-label decision thresholds) on the evaluation set (the first one when
        there are several; or `eval_dataset`, raw or prepared), store them in the model config, and return the
        metrics before and after (ECE included)."""
        dataset = first_split(self.eval_dataset if eval_dataset is None else eval_dataset)
        if dataset is None:
            raise ValueError("calibrate() needs an evaluation dataset.")
        config = unwrap_classifier(self.model).config
        if "input_ids" not in dataset.column_names:  # raw rows: prepare them like the evaluation data
            reserve = len(config.suffix_token_ids or [])
            dataset, _ = self._prepare_dataset(dataset, self.processing_class, self.args, reserve, "calibration")
        config.temperature, config.decision_thresholds = 1.0, None
        output = self.predict(dataset, metric_key_prefix="uncalibrated")
        temperature, thresholds = calibrate_logits(output.predictions, output.label_ids,
                                                   self.label_space.problem_type, self.args.per_class_thresholds)
        config.temperature, config.decision_thresholds = temperature, thresholds
        if thresholds is not None and self._default_metrics:
            space = self.label_space
            self.compute_metrics = build_compute_metrics(space.problem_type, space.id2label, threshold=thresholds)
        after = self.predict(dataset, metric_key_prefix="calibrated").metrics
        self.calibration_results = {
            "temperature": temperature,
            "decision_thresholds": thresholds,
            "before": output.metrics,
            "after": after,
        }
        self._refresh_card_evaluation()
        logger.info(
            "Calibration: temperature %.3f, ECE %.4f -> %.4f",
            temperature,
            output.metrics.get("uncalibrated_ece", float("nan")),
            after.get("calibrated_ece", float("nan")),
        )
        return self.calibration_results

    def prepare_dataset(self, dataset: Dataset, split: str = "test") -> Dataset:
        """Raw rows (text and label columns) tokenized and encoded like the evaluation data, for `predict`."""
        reserve = len(unwrap_classifier(self.model).config.suffix_token_ids or [])
        return self._prepare_dataset(dataset, self.processing_class, self.args, reserve, split)[0]

    def _evaluation_facts(self, dataset: Dataset, split: str) -> tuple[EvaluationFacts, dict]:
        """`evaluate_dataset`'s pass over raw rows: prepared like the evaluation data, predicted, and logged (as
        `Trainer.evaluate` logs its metrics)."""
        facts, metrics = self._predict_facts(self.prepare_dataset(dataset, split), split)
        self.log(metrics)
        return facts, metrics

    def classify(self, texts: Sequence[str], batch_size: int | None = None,
                 compile: bool | None = None) -> list[dict]:
        """Labels and probabilities for raw texts (see `hf_clf_ext.classify_texts`); compiled by default when the
        trainer trains compiled (`torch_compile=True`)."""
        return classify_texts(
            self.model,
            self.processing_class,
            texts,
            batch_size=batch_size or self.args.per_device_eval_batch_size,
            compile=compile if compile is not None else (True if self.args.torch_compile else None),
        )

    predict_texts = deprecated_alias("predict_texts", "classify")

    # --- model card and Hub ------------------------------------------------------------------------------------------

    def _own_card_facts(self, adaptation: AdaptationFacts) -> dict:
        classifier = unwrap_classifier(self.model)
        config, args = classifier.config, self.args
        reserve = len(config.suffix_token_ids or [])
        evaluation = first_split(self.eval_dataset)
        streamed = self._streamed
        split_lengths = {"train": list(streamed.lengths) if streamed is not None
                         else [len(ids) + reserve for ids in self.train_dataset["input_ids"]]}
        if evaluation is not None:
            split_lengths["evaluation"] = [len(ids) + reserve for ids in evaluation["input_ids"]]
        hyperparameters = self._hyperparameter_rows(
            {"learning rate (adapters)": args.learning_rate, "learning rate (head)": args.head_learning_rate},
            {
                "loss": args.loss + (f" (gamma {args.focal_gamma:g})" if args.loss == "focal" else ""),
                "class weights": args.class_weights or "none",
                "max length": args.max_length,
                "truncation keeps": "start" if args.truncation_side == "right" else "end",
                "pooling": config.pooling,
                "head initialised from": "the label names' LM embeddings" if args.head_init == "label_names"
                else "random",
            },
            adaptation,
        )
        detail = ""
        if adaptation.quantization == "4bit" and args.quantization == "4bit":
            detail = (f"NF4, double quantization {args.bnb_4bit_use_double_quant}, "
                      f"compute {args.bnb_4bit_compute_dtype}")
        return dict(
            base_model=self._base_model_id or config.text_config.name_or_path or classifier.name_or_path,
            train_labels=self.train_dataset["labels"] if streamed is None else (),
            train_texts=self.train_texts or (),
            label_counts=list(streamed.counts) if streamed is not None else None,
            label_examples=streamed.examples if streamed is not None else None,
            split_lengths=split_lengths,
            split_truncated={"evaluation": self.truncated.get("evaluation", 0),
                             **({"train": self.truncated["training"]} if streamed is None else {})},
            hyperparameters=hyperparameters,
            quantization_detail=detail,
            pooling_suffix=config.pooling_suffix,
            evaluation=self._card_evaluation if self._card_evaluation is not None or evaluation is None
            else self._predict_facts(evaluation)[0],
        )

    def _adaptation_kind(self) -> tuple[str, str]:
        classifier = unwrap_classifier(self.model)
        quantization = "4bit" if getattr(classifier, "is_loaded_in_4bit", False) else (
            "8bit" if getattr(classifier, "is_loaded_in_8bit", False) else "none")
        return "LoRA" if isinstance(self.model, PeftModel) else "full fine-tuning", quantization

    def _predict_facts(self, dataset: Dataset, split: str = "eval") -> tuple[EvaluationFacts, dict]:
        """What the card reports about prepared `dataset`, and the metrics of that prediction pass (prefixed
        `split_`)."""
        space = self.label_space
        config = unwrap_classifier(self.model).config
        output = self.predict(dataset, metric_key_prefix=split)
        # The model already divides its logits by the fitted temperature.
        probabilities = probabilities_from_logits(output.predictions, space.problem_type)
        predictions = decide(probabilities, space.multi_label, config.decision_thresholds)
        references = np.asarray(output.label_ids).astype(int) if space.multi_label else np.asarray(output.label_ids)
        reliability = load_metric("calibration", "multi_label" if space.multi_label else "single_label").compute(
            probabilities=probabilities.tolist(), references=references.tolist()
        )["reliability"]
        calibration = None
        if self.calibration_results:
            results = self.calibration_results
            calibration = {
                "temperature": results["temperature"],
                "decision_thresholds": results["decision_thresholds"],
                "ece_before": results["before"].get("uncalibrated_ece"),
                "ece_after": results["after"].get("calibrated_ece"),
            }
        metrics = {
            key.removeprefix(f"{split}_"): value
            for key, value in output.metrics.items()
            if isinstance(value, (int, float)) and not key.endswith(("runtime", "per_second"))
        }
        facts = EvaluationFacts(
            metrics=metrics,
            probabilities=probabilities,
            references=references,
            predictions=predictions,
            reliability=reliability,
            calibration=calibration,
            split="test" if split == "test" else "evaluation",
        )
        return facts, output.metrics

    # --- saving ------------------------------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The final model as adapter + head (the adapter in `adapter/`, this model's config and code at the top, so
        that a Hub repo id loads through `AutoModelForSequenceClassification` and `pipeline()`), or merged when
        `merge_adapter` is set or the backbone has no Hub id to load from. Checkpoints keep PEFT's own layout,
        which `Trainer` resumes from."""
        output_dir = output_dir or self.args.output_dir
        check_not_source(output_dir, self._local_source)
        if not isinstance(self.model, PeftModel):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:  # the adapter is whole on every process: the main process writes
            return
        classifier = unwrap_classifier(self.model)
        config = copy.deepcopy(classifier.config)
        config.architectures = [type(classifier).__name__]
        quantization_config = config.__dict__.pop("quantization_config", None)  # the adapter holds float weights
        config.adapter_subfolder = config.base_quantization_config = None
        if self.saving_checkpoint:
            super()._save(output_dir, state_dict)
        elif self.args.merge_adapter or self._hub_base is None:
            if not self.args.merge_adapter:
                logger.info("The backbone was loaded from a local folder or GGUF file, which an adapter could not "
                            "name as its base on another machine: saving the merged model.")
            return self.save_merged(output_dir, state_dict)
        else:
            self.model.save_pretrained(os.path.join(output_dir, ADAPTER_SUBFOLDER), state_dict=state_dict)
            self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            config.adapter_subfolder = ADAPTER_SUBFOLDER
            config.base_model_name_or_path = self._hub_base
            config.base_model_revision = self._base_revision
            if quantization_config is not None:
                config.base_quantization_config = quantization_config.to_dict()
        custom_object_save(classifier, output_dir, config=config)  # before the config is written: it adds auto_map
        config.save_pretrained(output_dir)

    def _rebuild_model(self):
        return self._rebuild() if self._rebuild is not None else None

    def _adopt_merged(self, merged) -> None:
        """A merged save records its base (only a record: it loads whole): the repository and, when that is the one
        loaded from, its commit. Merging into 4-bit/8-bit weights is lossy, which a warning says."""
        if self._adaptation.quantization != "none":
            logger.warning(
                "Merging LoRA into %s weights re-quantizes them: the merged model's predictions can differ from the "
                "trained one's. Keep the adapter (the default save) for exact results.", self._adaptation.quantization
            )
        merged.config.base_model_name_or_path = self._base_model_id
        merged.config.base_model_revision = self._base_revision if self._base_model_id == self._hub_base else None
