"""Distillation: a trained classifier (the teacher) labels an unlabelled pool with probabilities, and a cheaper
student learns them: KL divergence to the teacher's temperature-softened distribution (Hinton et al. 2015), mixed
with cross-entropy on the few gold labels. Students: a decoder through our last-token classifier (a smaller
checkpoint, the backbone cut to its first k layers, or the same model: self-training), any
`AutoModelForSequenceClassification`, or TF-IDF + logistic regression.

Every student is saved where it loads with `TextClassifier.from_pretrained`, evaluated on the same test split as its
teacher, and carded with the teacher, the pool and how often the two agree.
"""

import dataclasses
import logging
import os
import re
import time
from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM, DataCollatorWithPadding, EarlyStoppingCallback, Trainer

from ..calibration import calibrate_logits
from ..labels import LabelSpace, decide
from ..last_token.trainer import LastTokenTrainer
from ..metrics import (
    build_compute_metrics,
    load_metric,
    metrics_from_results,
    named_from_results,
    probabilities_from_results,
)
from ..cards.model_card import CardFacts, EvaluationFacts, write_model_card
from .tfidf import TfidfClassifier

logger = logging.getLogger(__name__)

TEACHER_COLUMNS = ("teacher_probs", "has_gold")


def check_temperature(temperature) -> float:
    """A distillation temperature: a positive finite number (NaN softened every target to NaN, inf to uniform)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
            or not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"The distillation temperature must be a positive finite number, got {temperature!r}.")
    return float(temperature)


def check_gold_weight(gold_weight) -> float:
    if isinstance(gold_weight, bool) or not isinstance(gold_weight, (int, float, np.floating, np.integer)) \
            or not 0 <= gold_weight <= 1:  # NaN fails the comparison
        raise ValueError(f"gold_weight must lie in [0, 1], got {gold_weight!r}.")
    return float(gold_weight)


def soften(probabilities, temperature: float, multi_label: bool) -> np.ndarray:
    """The teacher's distribution at temperature T: softmax(log p / T) per row, or per label sigmoid(logit(p) / T)."""
    temperature = check_temperature(temperature)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    if multi_label:
        return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))
    z = np.log(p) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def hard_labels(probabilities, names: Sequence[str], multi_label: bool, thresholds=None, at_least_one: bool = False
                ) -> list:
    """The labels a teacher's probabilities name (`labels.decide`): the argmax, or (multi-label) every label at or
    above its threshold, and the most probable where none is and the teacher names at least one
    (`TextClassifier.names_at_least_one`)."""
    decided = decide(probabilities, multi_label, thresholds, at_least_one=at_least_one)
    if not multi_label:
        return [names[i] for i in decided]
    return [[name for name, hit in zip(names, row) if hit] for row in decided]


def distillation_loss(logits, soft_targets, labels, has_gold, *, multi_label: bool, temperature: float,
                      gold_weight: float) -> torch.Tensor:
    """Mean over rows of T^2 KL(teacher_T || student_T), plus, on rows with a gold label, `gold_weight` x CE(gold)
    in place of that share of the KL term. Multi-label: the binary KL and BCE of each label, averaged over labels."""
    temperature, gold_weight = check_temperature(temperature), check_gold_weight(gold_weight)
    logits, q = logits.float(), soft_targets.to(torch.float32)
    scaled = logits / temperature
    if multi_label:
        log_p, log_not_p = F.logsigmoid(scaled), F.logsigmoid(-scaled)
        kl = (torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q) - q * log_p - (1 - q) * log_not_p).mean(-1)
        gold = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1)
    else:
        kl = (torch.special.xlogy(q, q) - q * scaled.log_softmax(-1)).sum(-1)
        gold = F.cross_entropy(logits, labels.long(), reduction="none")
    kl = kl * temperature**2
    has_gold = has_gold.bool()
    per_row = torch.where(has_gold, gold_weight * gold + (1 - gold_weight) * kl, kl)
    return per_row.mean()


class DistillationLossMixin:
    """Trains on rows carrying `teacher_probs` (softened targets) and `has_gold`; rows without them (evaluation)
    take the trainer's own loss."""

    # The loss is a mean over the micro-batch's rows: `training_step` divides it by the accumulation steps. (Trainer
    # would take it as already scaled for a model whose forward accepts loss kwargs, as BERT's does, and accumulate
    # `gradient_accumulation_steps` times the gradient.)
    loss_is_scaled_for_ga = False

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *TEACHER_COLUMNS]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "teacher_probs" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        soft, has_gold, labels = inputs.pop("teacher_probs"), inputs.pop("has_gold"), inputs.pop("labels")
        outputs = model(**inputs)
        args = self.args
        loss = distillation_loss(outputs.logits, soft, labels, has_gold, multi_label=self.label_space.multi_label,
                                 temperature=args.distill_temperature, gold_weight=args.gold_weight)
        return (loss, outputs) if return_outputs else loss


class LastTokenDistillationTrainer(DistillationLossMixin, LastTokenTrainer):
    """A last-token student: `train_dataset` holds text and label columns (gold labels, or the teacher's for pool
    rows), `soft_targets` the teacher's softened probabilities for the same rows, `has_gold` which rows are gold."""

    def __init__(self, model, args, train_dataset, soft_targets, has_gold, distillation: dict | None = None, **kwargs):
        self._teacher_columns = {"teacher_probs": np.asarray(soft_targets, dtype=np.float32).tolist(),
                                 "has_gold": [bool(flag) for flag in has_gold]}
        self.distillation = dict(distillation or {})
        super().__init__(model, args=args, train_dataset=train_dataset, **kwargs)

    def _prepare_dataset(self, dataset, tokenizer, args, reserve, split):
        prepared, texts = super()._prepare_dataset(dataset, tokenizer, args, reserve, split)
        if split == "training":
            for name, values in self._teacher_columns.items():
                prepared = prepared.add_column(name, values)
        return prepared, texts

    def card_predictions(self) -> np.ndarray:
        """The predictions of the evaluation the card reports (the test split after `evaluate_dataset`)."""
        return self._card_evaluation.predictions

    def card_facts(self, model_name=None, dataset_name=None, tags=None) -> CardFacts:
        facts = super().card_facts(model_name, dataset_name, [*(tags or []), "distillation"])
        facts.extra["distillation"] = distillation_rows(self.distillation)
        facts.hyperparameters.update(distillation_hyperparameters(self.args))
        return facts


class SequenceClassificationDistillationTrainer(DistillationLossMixin, Trainer):
    """Any `AutoModelForSequenceClassification` (an encoder, for instance), fully fine-tuned on the soft targets."""

    def __init__(self, model, args, label_space: LabelSpace, **kwargs):
        self.label_space = label_space
        super().__init__(model=model, args=args, **kwargs)


def truncated_backbone(name_or_path: str, layers: int, **from_pretrained_kwargs):
    """A causal LM keeping only its first `layers` decoder layers (their weights loaded, the rest never built): the
    student runs in every engine its architecture runs in. A weight missing from the checkpoint, or any unexpected
    one but those of the dropped layers, is an error."""
    config_kwargs = {key: from_pretrained_kwargs[key]
                     for key in ("revision", "token", "cache_dir", "trust_remote_code", "local_files_only")
                     if key in from_pretrained_kwargs}
    config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    text = config.get_text_config()
    total = text.num_hidden_layers
    if not 1 <= layers <= total:
        raise ValueError(f"student_layers={layers}, but {name_or_path} has {total} decoder layers.")
    text.num_hidden_layers = layers
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types)[:layers]
    model, info = AutoModelForCausalLM.from_pretrained(name_or_path, config=config, output_loading_info=True,
                                                       **from_pretrained_kwargs)
    dropped = re.compile(r"\.(\d+)\.")
    unexpected = [key for key in info["unexpected_keys"]
                  if not (match := dropped.search(key)) or int(match.group(1)) < layers]
    if info["missing_keys"] or unexpected:
        raise ValueError(f"Loading the first {layers} layers of {name_or_path}: missing weights "
                         f"{sorted(info['missing_keys'])[:10]}, unexpected weights {sorted(unexpected)[:10]}.")
    model.name_or_path = str(name_or_path)
    return model, total


def distillation_hyperparameters(args) -> dict:
    return {"distillation temperature": args.distill_temperature,
            "gold-label weight": args.gold_weight if args.include_gold else "no gold rows"}


def distillation_rows(distillation: dict) -> list[tuple[str, str]]:
    """The card's distillation table, from what the run recorded."""
    rows = [("Teacher", distillation.get("teacher")), ("Teacher approach", distillation.get("teacher_approach")),
            ("Unlabelled pool", f"{distillation.get('pool_size', 0):,} texts"),
            ("Gold-labelled rows", f"{distillation.get('gold_rows', 0):,}"),
            ("Student", distillation.get("student"))]
    for key, name in (("test_agreement", "Agreement with the teacher (test)"),
                      ("teacher_test_f1_macro", "Teacher macro-F1 (test)"),
                      ("teacher_test_accuracy", "Teacher accuracy (test)"),
                      ("student_test_f1_macro", "Student macro-F1 (test)")):
        if distillation.get(key) is not None:
            rows.append((name, f"{distillation[key]:.4f}"))
    return [(name, str(value)) for name, value in rows if value is not None]


def agreement(student: np.ndarray, teacher: np.ndarray) -> float:
    """Share of rows where the two name the same label (single-label), or the same set of labels (multi-label)."""
    student, teacher = np.asarray(student), np.asarray(teacher)
    same = student == teacher if student.ndim == 1 else (student == teacher).all(axis=1)
    return float(same.mean())


# --- TF-IDF and stock students ---------------------------------------------------------------------------------------


def fit_tfidf_student(args, space: LabelSpace, texts, targets, validation=None) -> TfidfClassifier:
    """A TF-IDF student on `targets` (softened teacher probabilities, gold rows mixed with their one-hot label);
    the distillation temperature is undone on its logits, then temperature (and multi-label thresholds) are fitted
    on `validation` = (texts, encoded labels), as for the other classifiers."""
    student = TfidfClassifier.fit(texts, targets, space.names, space.multi_label, ngram_max=args.tfidf_ngram_max,
                                  sublinear_tf=args.tfidf_sublinear_tf, min_df=args.tfidf_min_df, C=args.tfidf_C,
                                  balanced=space.multi_label, seed=args.seed)
    # Trained on targets softened by T, its logits are the teacher's divided by T: bring them back to its scale.
    student.temperature = 1 / args.distill_temperature
    if validation is not None and args.calibrate:
        val_texts, val_labels = validation
        logits = student.logits(val_texts) * student.temperature
        temperature, thresholds = calibrate_logits(logits, val_labels, space.problem_type, args.per_class_thresholds)
        student.temperature = temperature
        if thresholds is not None:
            student.decision_thresholds = thresholds
    return student


def stock_student(name_or_path: str, space: LabelSpace, **from_pretrained_kwargs):
    """`(model, tokenizer)`: the stock sequence classifier of `name_or_path`, labelled like the teacher."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # The tokenizer of the same revision (and cache, token, ...) as the weights.
    hub = {key: from_pretrained_kwargs[key] for key in ("revision", "token", "cache_dir", "trust_remote_code",
                                                        "local_files_only") if key in from_pretrained_kwargs}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=len(space.names), id2label=space.id2label, label2id=space.label2id,
        problem_type=space.problem_type, pad_token_id=tokenizer.pad_token_id, **from_pretrained_kwargs,
    )
    return model, tokenizer


def prepare_stock_tokenizer(tokenizer, args):
    """The student's tokenizer as it is saved: it cuts texts where training cut them (`model_max_length`, the side
    of `truncation_side`), as `TextClassifier`, `classify_texts` and `pipeline(..., truncation=True)` cut with it, and
    strips them as `texts.normalize_text` does (training texts are stripped), for users of plain transformers."""
    from ..texts import add_strip_normalizer, set_truncation

    set_truncation(tokenizer, args.max_length, args.truncation_side)
    return add_strip_normalizer(tokenizer)


def train_stock_student(args, space: LabelSpace, model, tokenizer, texts, encoded, soft_targets, has_gold,
                        validation=None) -> SequenceClassificationDistillationTrainer:
    from ..texts import normalize_texts

    tokenizer = prepare_stock_tokenizer(tokenizer, args)

    def encode(split_texts, labels, extra=None):
        # Exactly as classify_texts tokenizes: normalised texts, cut at the tokenizer's model_max_length.
        columns = dict(tokenizer(normalize_texts(split_texts), truncation=True))
        return Dataset.from_dict({**columns, "labels": list(labels), **(extra or {})})

    train = encode(texts, encoded, {"teacher_probs": np.asarray(soft_targets, dtype=np.float32).tolist(),
                                    "has_gold": [bool(flag) for flag in has_gold]})
    evaluation = encode(*validation) if validation is not None else None
    if evaluation is None:
        args = dataclasses.replace(args, eval_strategy="no", load_best_model_at_end=False)
    callbacks = [EarlyStoppingCallback(args.early_stopping_patience)] \
        if evaluation is not None and args.early_stopping_patience and args.eval_strategy != "no" else []
    trainer = SequenceClassificationDistillationTrainer(
        model, args, space, train_dataset=train, eval_dataset=evaluation, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), callbacks=callbacks,
        compute_metrics=build_compute_metrics(space.problem_type, space.id2label),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if evaluation is not None and args.calibrate:
        calibrate_stock_student(trainer, evaluation, args.per_class_thresholds)
    return trainer


def calibrate_stock_student(trainer, evaluation, per_class: bool = False) -> tuple[float, list[float] | None]:
    """Fit the temperature (and multi-label thresholds) on `evaluation`, as for every other classifier, and keep them
    where a stock model carries them: the temperature folded into the head's last linear layer (its weight and bias
    divided by it, so `pipeline()`, ONNX and `TextClassifier` all serve the calibrated probabilities), the thresholds
    in `config.decision_thresholds` (read by `TextClassifier`)."""
    model, space = trainer.model, trainer.label_space
    output = trainer.predict(evaluation, metric_key_prefix="uncalibrated")
    temperature, thresholds = calibrate_logits(output.predictions, output.label_ids, space.problem_type, per_class)
    head = [module for module in model.modules()
            if isinstance(module, torch.nn.Linear) and module.out_features == len(space.names)]
    if not head:
        raise ValueError(f"No linear layer of {type(model).__name__} gives its {len(space.names)} logits: the "
                         "temperature has nowhere to go (set calibrate: false).")
    with torch.no_grad():
        head[-1].weight /= temperature
        if head[-1].bias is not None:
            head[-1].bias /= temperature
    model.config.temperature_folded, model.config.decision_thresholds = temperature, thresholds
    return temperature, thresholds


def write_student_card(output_dir: str, *, student: str, space: LabelSpace, distillation: dict, train_texts,
                       train_labels, parameters: int, hyperparameters: dict, results=None, references=None,
                       base_model=None, dataset_name=None) -> None:
    """The card of a TF-IDF or stock student, with its test-split `results` when there is a test split (a last-token
    student has its trainer's card plus the same distillation table)."""
    evaluation = None
    if results is not None:
        probabilities = probabilities_from_results(results, space.names)
        metrics = metrics_from_results(results, references, space.problem_type, space.id2label)
        reliability = load_metric("calibration", "multi_label" if space.multi_label else "single_label").compute(
            probabilities=probabilities.tolist(), references=np.asarray(references).tolist())["reliability"]
        named = named_from_results(results, space.names)
        predictions = named.astype(int) if space.multi_label else named.argmax(axis=1)
        evaluation = EvaluationFacts(metrics=metrics, probabilities=probabilities, references=np.asarray(references),
                                     predictions=predictions, reliability=reliability, split="test")
    facts = CardFacts(
        model_name=os.path.basename(os.path.normpath(output_dir)), base_model=base_model or student,
        label_names=space.names, multi_label=space.multi_label, train_labels=train_labels, train_texts=train_texts,
        split_lengths={}, max_length=0, hyperparameters=hyperparameters, trainable_parameters=parameters,
        total_parameters=parameters, adaptation="distillation", dataset_name=dataset_name, tags=["distillation"],
        evaluation=evaluation,
        extra={"distillation": distillation_rows(distillation), "student": student,
               "library_name": "sklearn" if student == "tfidf" else "transformers", "kind_tags": [student]},
    )
    write_model_card(facts, output_dir, template="distilled")


# --- the run ---------------------------------------------------------------------------------------------------------


def run_distillation(args, splits, pool_texts: list[str], model: str | None, model_kwargs: dict,
                     dataset_name: str | None = None) -> dict:
    """The teacher labels pool + gold + test texts (resumably, shared out across the processes); the student of
    `args.student_type` trains on the pool (and the gold rows), is saved to `args.output_dir`, evaluated on the test
    split against the teacher, and carded. Returns the flat results (`test_*` the student's, `teacher_test_*`)."""
    from ..classifier import TextClassifier
    from ..engines import parse_vllm_options
    from ..texts import build_texts
    from ..labels import encode_labels, encode_split, label_values, results_from_probabilities
    from ..metrics import metrics_from_results
    from .teacher_labels import label_pool

    check_student_folder(args.output_dir, args.student_type)
    teacher = TextClassifier.from_pretrained(args.teacher, engine=args.teacher_engine, vllm_python=args.vllm_python,
                                             vllm_options=parse_vllm_options(args.vllm_options) or None)
    space = LabelSpace(names=tuple(teacher.labels), multi_label=teacher.multi_label)

    def gold(name):
        if name not in splits:
            return None
        rows, encoded = encode_split(splits[name], args.label_column, space, split=name if name != "train" else
                                     "training", drop_unknown=args.drop_unknown_labels)
        return (build_texts(rows, args.text_columns, args.text_template, name), encoded,
                label_values(rows, args.label_column))

    train, validation, test = gold("train"), gold("validation"), gold("test")
    gold_texts = train[0] if train is not None and args.include_gold else []
    test_texts = test[0] if test is not None else []
    texts = [*pool_texts, *gold_texts, *test_texts]
    path = args.teacher_labels_path
    started = time.perf_counter()
    probabilities = label_pool(teacher, texts, path, method=args.teacher_method, batch_size=args.teacher_batch_size,
                               max_chars=args.max_pool_chars, progress=not args.disable_tqdm)  # every process labels
    teacher_seconds = time.perf_counter() - started
    thresholds, approach, engine = teacher.thresholds, teacher.approach, teacher.engine_name
    at_least_one = teacher.names_at_least_one  # the teacher's labels are those its users get
    teacher.close()  # a vLLM worker stops here, before the student trains
    del teacher
    n_pool, n_gold = len(pool_texts), len(gold_texts)
    train_p, test_p = probabilities[: n_pool + n_gold], probabilities[n_pool + n_gold :]
    train_texts = [*pool_texts, *gold_texts]
    has_gold = np.r_[np.zeros(n_pool, bool), np.ones(n_gold, bool)]
    names = hard_labels(train_p[:n_pool], space.names, space.multi_label, thresholds, at_least_one)
    train_names = [*names, *(train[2] if n_gold else [])]
    train_encoded = [*encode_labels(names, space)[0], *(train[1] if n_gold else [])]  # ids or multi-hot
    soft = soften(train_p, args.distill_temperature, space.multi_label)
    results = {"pool_size": n_pool, "gold_rows": n_gold, "teacher_labelling_seconds": teacher_seconds,
               "teacher_engine": engine}
    teacher_test = None
    if test is not None:
        teacher_results = results_from_probabilities(test_p, space.names, space.multi_label, thresholds,
                                                     at_least_one=at_least_one)
        teacher_metrics = metrics_from_results(teacher_results, np.asarray(test[1]), space.problem_type,
                                               space.id2label)
        results.update({f"teacher_test_{key}": value for key, value in teacher_metrics.items()})
        teacher_test = np.asarray(encode_labels([r["labels"] if space.multi_label else r["label"]
                                                 for r in teacher_results], space)[0])
    distillation = {"teacher": args.teacher, "pool_size": n_pool, "gold_rows": n_gold,
                    "teacher_approach": "instruction (label scoring)" if approach == "instruction" else approach,
                    "student": args.student_type, "teacher_test_f1_macro": results.get("teacher_test_f1_macro"),
                    "teacher_test_accuracy": results.get("teacher_test_accuracy")}

    started = time.perf_counter()
    if args.student_type == "last_token":  # its trainer evaluates, saves and cards it
        trainer = _last_token_student(args, space, model, model_kwargs, train_texts, train_names, soft, has_gold,
                                      validation, distillation)
        trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
        results.update({"train_seconds": time.perf_counter() - started,
                        "student_parameters": sum(p.numel() for p in trainer.model.parameters()),
                        "student_temperature": (trainer.calibration_results or {}).get("temperature")})
        if validation is not None:
            results.update(trainer.evaluate())
        if test is not None:
            started = time.perf_counter()
            results.update(trainer.evaluate_dataset(_rows(test_texts, test[2]), metric_key_prefix="test"))
            results["test_examples_per_second"] = len(test_texts) / (time.perf_counter() - started)
            results["test_agreement"] = agreement(trainer.card_predictions(), teacher_test)
        trainer.distillation.update(test_agreement=results.get("test_agreement"),
                                    student_test_f1_macro=results.get("test_f1_macro"))
        trainer.save_model()
        trainer.create_model_card(dataset_name=dataset_name)
        return results
    gold_targets = None if not n_gold else np.asarray(train[1], dtype=np.float64) if space.multi_label \
        else np.eye(len(space.names))[train[1]]
    if args.student_type == "tfidf":
        mixed = soft.copy()
        if n_gold:
            mixed[n_pool:] = args.gold_weight * gold_targets + (1 - args.gold_weight) * soft[n_pool:]
        student = fit_tfidf_student(args, space, train_texts, mixed, validation[:2] if validation else None)
        if args.should_save:
            student.save_pretrained(args.output_dir)
        parameters, base_model = student.num_parameters, None
        results["student_temperature"] = student.temperature if validation and args.calibrate else None
        hyperparameters = {"n-grams": f"1-{args.tfidf_ngram_max}", "sublinear tf": args.tfidf_sublinear_tf,
                           "min df": args.tfidf_min_df, "C": args.tfidf_C,
                           "temperature (fitted on validation)": results["student_temperature"] or "-",
                           **distillation_hyperparameters(args)}
    else:
        model_object, tokenizer = stock_student(model, space, **model_kwargs)
        stock = train_stock_student(args, space, model_object, tokenizer, train_texts, train_encoded, soft, has_gold,
                                    validation[:2] if validation else None)
        stock.save_model(args.output_dir)
        parameters, base_model = sum(p.numel() for p in stock.model.parameters()), args.base_model_id or model
        results["student_temperature"] = getattr(stock.model.config, "temperature_folded", None)
        hyperparameters = {"learning rate": args.learning_rate, "epochs (max)": args.num_train_epochs,
                           "max length": args.max_length,
                           "temperature (fitted on validation)": results["student_temperature"] or "-",
                           **distillation_hyperparameters(args)}
    results.update({"train_seconds": time.perf_counter() - started, "student_parameters": parameters})
    if args.process_index != 0:
        return results
    loaded = TextClassifier.from_pretrained(args.output_dir)  # the saved student, as users load it
    if validation is not None:
        metrics = metrics_from_results(loaded.classify(validation[0], batch_size=args.per_device_eval_batch_size),
                                       validation[1], space.problem_type, space.id2label)
        results.update({f"eval_{key}": value for key, value in metrics.items()})
    student_results = None
    if test is not None:
        started = time.perf_counter()
        student_results = loaded.classify(test_texts, batch_size=args.per_device_eval_batch_size)
        results["test_examples_per_second"] = len(test_texts) / (time.perf_counter() - started)
        metrics = metrics_from_results(student_results, test[1], space.problem_type, space.id2label)
        results.update({f"test_{key}": value for key, value in metrics.items()})
        named = named_from_results(student_results, space.names)
        results["test_agreement"] = agreement(named if space.multi_label else named.argmax(axis=1), teacher_test)
        distillation.update(test_agreement=results["test_agreement"],
                            student_test_f1_macro=results.get("test_f1_macro"))
    write_student_card(args.output_dir, student=args.student_type if model is None else model, space=space,
                       distillation=distillation, train_texts=train_texts,
                       train_labels=train_encoded,
                       parameters=parameters, hyperparameters=hyperparameters, results=student_results,
                       references=test[1] if test is not None else None, base_model=base_model,
                       dataset_name=dataset_name)
    return results


def check_student_folder(output_dir, student_type: str) -> None:
    """An error if `output_dir` holds files of another kind of classifier that `TextClassifier.from_pretrained`
    reads before the student's own: the student saved there would not be the model that loads (nor the one this run
    evaluates)."""
    from ..classifier import check_nothing_loads_instead

    check_nothing_loads_instead(output_dir, "tfidf" if student_type == "tfidf" else "last_token")


def _last_token_student(args, space, model, model_kwargs, texts, names, soft, has_gold, validation, distillation):
    from ..texts import load_tokenizer

    args.text_columns, args.text_template, args.label_column = ["text"], None, "label"
    tokenizer = load_tokenizer(model, model_kwargs.get("gguf_file"))
    backbone, init_kwargs = model, model_kwargs
    if args.student_layers is not None:
        backbone, total = truncated_backbone(model, args.student_layers, **model_kwargs)
        init_kwargs = {}
        args.merge_adapter = True  # an adapter would name the whole backbone as its base
        distillation["student"] = f"last_token, first {args.student_layers} of {total} layers of {model}"
    else:
        distillation["student"] = f"last_token on {model}"
    return LastTokenDistillationTrainer(
        backbone, args, _rows(texts, names), soft, has_gold, distillation,
        eval_dataset=_rows(validation[0], validation[2]) if validation is not None else None,
        processing_class=tokenizer, labels=list(space.names), model_init_kwargs=init_kwargs,
    )


def _rows(texts, names) -> Dataset:
    return Dataset.from_dict({"text": list(texts), "label": list(names)})
