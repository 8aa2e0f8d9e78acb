"""`InstructionTrainer`: classification as prompt -> label text, fine-tuned with TRL's `SFTTrainer`.

The recipe tokenizes examples itself: the prompt (text cut to fit), then the answer as the verbalizer's in-context
label tokens and a stop token, with `-100` labels over the prompt. Training, constrained decoding and label scoring
therefore all see the same token ids, whatever the tokenizer merges across the prompt/answer boundary.
"""

import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from datasets import Dataset
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from trl import SFTTrainer

from ..labels import encode_split, decision_thresholds
from ..texts import build_texts, load_tokenizer
from ..last_token.inference import check_texts
from .classifier import DEFAULT_MULTI_LABEL_TEMPLATE, DEFAULT_TEMPLATE, InstructionClassifier, InstructionPrompt
from .config import InstructionConfig
from ..calibration import tune_thresholds
from ..metrics import load_metric, metrics_from_results, named_from_results, probabilities_from_results
from ..cards.model_card import EvaluationFacts, metric_rows
from .prompt_cache import is_prompt_learning, supports_logits_to_keep
from ..arguments import first_split, name_best_metric_for_eval_sets
from ..sharding import shards_parameters
from ..streaming import any_stream
from ..hub import check_not_source
from ..trainer_base import AdaptationFacts, ClassifierTrainerMixin, deprecated_alias
from .verbalizer import Verbalizer

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


class InstructionTrainer(ClassifierTrainerMixin, SFTTrainer):
    """Fine-tunes a causal LM to answer a classification prompt with a valid label (or label set).

    Args:
        model: a causal-LM name/path or object (TRL loads names with `args.model_init_kwargs`, quantized as
            `args.quantization` says).
        args: [`InstructionConfig`][hf_clf_ext.instruction.config.InstructionConfig].
        train_dataset: a `datasets.Dataset` with `args.text_columns` and `args.label_column`.
        eval_dataset: the same (or a dict of them: metrics per set).
        processing_class: the tokenizer (loaded from `model` when it is a name/path).
        peft_config: defaults to LoRA from `args` (r=64 on all projections).
        labels: class names in id order, when the label column holds ids without a `ClassLabel` feature.
    """

    _tag_names = ["trl", "sft", "hf-clf-ext", "instruction-classifier"]
    card_template = "instruction"

    def __init__(
        self,
        model: str | PreTrainedModel,
        args: InstructionConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        labels: Sequence[str] | None = None,
        callbacks=None,
        **kwargs,
    ):
        if args is None:
            args = InstructionConfig(output_dir="instruction-classifier")
        if any_stream(train_dataset, eval_dataset):
            raise ValueError("InstructionTrainer reads its data whole: give Dataset objects (a stream, an "
                             "IterableDataset, trains the last-token classifier: LastTokenTrainer).")
        init = args.model_init_kwargs if isinstance(args.model_init_kwargs, dict) else {}
        self._setup(model, args, train_dataset, labels, init)
        if isinstance(model, str) and args.sharded_qlora_dtype() is not None:
            # FSDP / ZeRO-3 flatten one dtype: the rest loads in the 4-bit weights' storage dtype.
            args.model_init_kwargs = init = args.with_sharded_dtype(init)
        tokenizer = processing_class or load_tokenizer(model, init.get("gguf_file"))
        # TRL loads a name a moment later, at the commit resolved here (but for a push in between): the adapter's
        # `revision`, which `InstructionClassifier.from_pretrained` loads the base at.
        self._record_base_revision(model, model, init)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

        multi = self.label_space.multi_label
        self.verbalizer = Verbalizer(
            list(self.label_space.names),
            label_texts=dict(args.label_texts or {}),
            multi_label=multi,
            delimiter=args.delimiter,
            max_labels=args.max_labels,
        )
        use_chat = args.use_chat_template if args.use_chat_template is not None else bool(tokenizer.chat_template)
        self.prompt = InstructionPrompt(
            template=args.prompt_template or (DEFAULT_MULTI_LABEL_TEMPLATE if multi else DEFAULT_TEMPLATE),
            use_chat_template=use_chat,
            system_prompt=args.system_prompt,
        )
        # The model is attached once TRL has loaded (and wrapped) it.
        self.classifier = InstructionClassifier(None, tokenizer, self.prompt, self.verbalizer, args.max_length)

        train, self.train_texts, self.train_label_ids = self._prepare(train_dataset, tokenizer, args, "training")
        evaluation = None
        self.eval_texts = self.eval_label_ids = None
        self._eval_sets: dict[str, tuple[list[str], list[list[int]]]] = {}  # metric key prefix -> texts, label ids
        if eval_dataset is not None:
            name_best_metric_for_eval_sets(args, eval_dataset)
            sets = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
            prepared = {}
            for name, split in sets.items():
                prepared[name], texts, label_ids = self._prepare(
                    split, tokenizer, args, "evaluation" if name is None else f"evaluation ({name})")
                self._eval_sets["eval" if name is None else f"eval_{name}"] = (texts, label_ids)
            evaluation = prepared[None] if None in prepared else prepared
            # Thresholds and the card use the first set, as the last-token trainer's calibration does.
            self.eval_texts, self.eval_label_ids = next(iter(self._eval_sets.values()))
        if peft_config is None and args.use_peft:
            peft_config = LoraConfig(
                task_type="CAUSAL_LM",
                r=args.lora_r,
                lora_alpha=args.lora_alpha,
                lora_dropout=args.lora_dropout,
                target_modules=list(args.lora_target_modules),
            )
        # A merged save under FSDP rebuilds the model whole (`_rebuild_model`).
        self._source, self._init, self._peft_config = model, dict(init), peft_config
        super().__init__(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=peft_config,
            quantization_config=args.bnb_config(),
            callbacks=callbacks,
            **kwargs,
        )
        self.classifier.model = self.model
        self._pin_adapter_revision(self.model)

    # --- data --------------------------------------------------------------------------------------------------------

    def _prepare(self, dataset: Dataset, tokenizer, args, split: str):
        """Token ids of prompt + answer, labels -100 over the prompt; plus the texts and label ids used."""
        dataset, encoded = encode_split(
            dataset, args.label_column, self.label_space, drop_unknown=args.drop_unknown_labels, split=split
        )
        texts = build_texts(dataset, args.text_columns, args.text_template, split)
        tokens = self.classifier.tokens
        rows = {"input_ids": [], "labels": []}
        label_ids = []
        for row, (text, ids) in enumerate(zip(texts, self._label_id_lists(encoded))):
            if not ids:
                raise ValueError(
                    f"Row {row} of the {split} data has no label: an instruction answer names at least one label."
                )
            answer = self.verbalizer.answer_ids(tokens, ids)
            # Room for the longest answer, as at inference, so texts are cut the same way in both.
            prompt = self.prompt.encode(tokenizer, self.verbalizer, text, args.max_length,
                                        self.classifier.max_answer_length)
            rows["input_ids"].append(prompt + answer)
            rows["labels"].append([IGNORE_INDEX] * len(prompt) + answer)
            label_ids.append(ids)
        return Dataset.from_dict(rows), texts, label_ids

    # --- the loss ----------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The answer tokens' negative log-likelihood, with the LM head applied at the answer positions only.

        An answer is a few tokens after a prompt of hundreds. Off CUDA/XPU, TRL's fused head projects every position
        onto the vocabulary (fixed tile shapes for compilers), which doubles a CPU step of a small model. Here the
        model computes logits only where the next token is an answer token (`logits_to_keep` with their positions);
        the loss, its normalisation and TRL's logged entropy, token accuracy and token count are the same. Set-ups
        this path does not cover (custom losses, label smoothing, DFT, MoE auxiliary losses, sequence/context/tensor
        parallelism, models without `logits_to_keep`) go through TRL's own `compute_loss`.
        """
        labels = inputs.get("labels")
        if (
            return_outputs
            or labels is None
            or "shift_labels" in inputs
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or self.args.loss_type != "nll"
            or self.aux_loss_enabled
            or self.accelerator.parallelism_config is not None
            or is_prompt_learning(self.model)
            or not supports_logits_to_keep(self.model)
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        targets = labels[:, 1:]
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        if not len(positions):  # nothing to learn in this batch: TRL returns a zero that still has a graph
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        # Positions on the CPU index hidden states on any device (the last one, with a model split by device_map).
        logits = model(**model_inputs, use_cache=False, logits_to_keep=positions.cpu()).logits.float()
        targets = targets[:, positions].to(logits.device)
        mask = targets != IGNORE_INDEX
        logprobs = logits[mask].log_softmax(-1)
        picked = targets[mask]
        token_logprobs = logprobs.gather(-1, picked[:, None]).squeeze(-1)
        count = mask.sum()
        denominator = count if num_items_in_batch is None else num_items_in_batch
        loss = -token_logprobs.sum() / torch.as_tensor(denominator, device=logits.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer: DDP averages the gradients across ranks
        self._log_token_metrics(inputs, logprobs.detach(), picked, count)
        return loss

    def _log_token_metrics(self, inputs, logprobs, targets, count):
        """What TRL logs from its loss: mean entropy and top-1 accuracy over the answer tokens, tokens trained on."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        valid = gather(count).sum()
        entropy = gather(torch.special.entr(logprobs.exp()).sum()).sum()  # 0 log 0 = 0 for masked-out tokens
        correct = gather((logprobs.argmax(-1) == targets).sum()).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += (
                gather(inputs["attention_mask"].sum()).sum().item() if "attention_mask" in inputs
                else gather(torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)).sum().item()
            )
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    # --- classification and evaluation -------------------------------------------------------------------------------

    def _after_training(self) -> None:
        """Tune multi-label thresholds (label scoring), then evaluate once for the model card."""
        if self.label_space.multi_label and self.eval_texts is not None and "score" in self.args.eval_methods:
            self.calibrate()
        if self.eval_texts is not None:
            self._card_evaluation = self._evaluate_texts(self.eval_texts, self.eval_label_ids, "evaluation")[1]

    def calibrate(self, texts: Sequence[str] | None = None, label_ids=None) -> list[float]:
        """Multi-label decision thresholds of label scoring, maximizing F1 on the evaluation texts (or `texts`
        with their label id lists); kept by the classifier and saved with it. (Constrained decoding names labels
        without probabilities: there is no temperature to fit, as the last-token trainer's `calibrate` does.)"""
        if not self.label_space.multi_label:
            raise ValueError("Decision thresholds are for multi-label classifiers.")
        texts, label_ids = (self.eval_texts, self.eval_label_ids) if texts is None else (texts, label_ids)
        probabilities = probabilities_from_results(self.classify(texts, method="score"), self.label_space.names)
        # Tuned under the rule they serve under: label scoring names at least one label, as decoding does.
        tuned = tune_thresholds(probabilities, self._references(label_ids), per_class=self.args.per_class_thresholds,
                                at_least_one=True)
        thresholds = decision_thresholds(tuned, len(self.label_space.names)).tolist()
        self.classifier.decision_thresholds = thresholds
        logger.info("Label-scoring decision thresholds tuned on %d texts: %s", len(texts), thresholds)
        return thresholds

    fit_thresholds = deprecated_alias("fit_thresholds", "calibrate")

    def classify(self, texts: Sequence[str], method: str = "generate", batch_size: int | None = None) -> list[dict]:
        """Labels for raw texts by constrained decoding (`"generate"`) or label scoring (`"score"`), under the
        training's mixed precision (bf16/fp16 autocast), as the trainer's own evaluation runs. Under DDP each process
        classifies its share and all get every result; where FSDP or ZeRO-3 shards the weights every forward is
        collective, so every process classifies every text, in step."""
        self.classifier.model = self.model
        batch_size = batch_size or self.args.per_device_eval_batch_size
        count, rank = self.accelerator.num_processes, self.accelerator.process_index
        if count == 1 or shards_parameters(self.args):
            with self.accelerator.autocast():
                return self.classifier.classify(texts, method=method, batch_size=batch_size)
        check_texts(texts)  # on every process, before any waits for the others
        texts = list(texts)
        with self.accelerator.autocast():
            mine = self.classifier.classify(texts[rank::count], method=method, batch_size=batch_size)
        results: list[dict] = [{}] * len(texts)
        for shard, rows in enumerate(gather_object([mine])):
            results[shard::count] = rows
        return results

    def classification_metrics(self, texts, label_ids, methods: Sequence[str] | None = None) -> dict[str, float]:
        """Metrics of each classification method on `texts` (F1, accuracy; ECE and Brier for label scoring), keyed
        `<metric>_<method>` (the method a suffix, as in `f1_macro_generate`), plus each method's examples per
        second."""
        return self._evaluate_texts(texts, label_ids, methods=methods)[0]

    def _evaluation_facts(self, dataset: Dataset, split: str) -> tuple[EvaluationFacts, dict]:
        """`evaluate_dataset`'s pass over raw rows: classification metrics of every `eval_methods` method."""
        args = self.args
        dataset, encoded = encode_split(
            dataset, args.label_column, self.label_space, drop_unknown=args.drop_unknown_labels, split=split
        )
        texts = build_texts(dataset, args.text_columns, args.text_template, split)
        metrics, facts = self._evaluate_texts(texts, self._label_id_lists(encoded), split)
        return facts, {f"{split}_{key}": value for key, value in metrics.items()}

    def _evaluate_texts(self, texts, label_ids, split: str = "evaluation", methods=None):
        """One classification pass per method: the metrics (keyed `<metric>_<method>`), and what the card reports
        (constrained decoding as the headline; label scoring's metrics as `secondary_metrics`, and its probabilities
        for the reliability diagram, when it ran)."""
        references = self._references(label_ids)
        runs = self._classify_for_metrics(texts, methods)
        space = self.label_space
        results = {method: metrics_from_results(rows, references, space.problem_type, space.id2label)
                   for method, (rows, _) in runs.items()}
        metrics = {f"{key}_{method}": value for method, result in results.items() for key, value in result.items()}
        metrics |= {f"examples_per_second_{method}": speed for method, (_, speed) in runs.items()}
        primary = "generate" if "generate" in runs else "score"
        probabilities = probabilities_from_results(runs["score"][0], space.names) if "score" in runs else None
        predictions = named_from_results(runs[primary][0], space.names)
        predictions = predictions.astype(int) if space.multi_label else predictions.argmax(-1)
        reliability = None
        if probabilities is not None:
            reliability = load_metric("calibration", "multi_label" if space.multi_label else "single_label").compute(
                probabilities=probabilities.tolist(), references=references.astype(int).tolist()
            )["reliability"]
        facts = EvaluationFacts(
            metrics=results[primary],
            probabilities=probabilities,
            references=references.astype(int),
            predictions=predictions,
            reliability=reliability,
            split=split,
            secondary_metrics=metric_rows(results["score"]) if primary != "score" and "score" in results else None,
        )
        return metrics, facts

    def _classify_for_metrics(self, texts, methods=None) -> dict[str, tuple[list[dict], float]]:
        """Per method: the results (labels, and probabilities from label scoring) and examples per second."""
        runs = {}
        for method in methods or self.args.eval_methods:
            started = time.perf_counter()
            results = self.classify(texts, method=method)
            runs[method] = (results, len(texts) / (time.perf_counter() - started))
        return runs

    def _label_id_lists(self, encoded) -> list[list[int]]:
        """The label ids of each row: from multi-hot rows, or the one class id."""
        if self.label_space.multi_label:
            return [[i for i, hot in enumerate(row) if hot] for row in encoded]
        return [[label] for label in encoded]

    def _references(self, label_ids) -> np.ndarray:
        if not self.label_space.multi_label:
            return np.array([ids[0] for ids in label_ids])
        hot = np.zeros((len(label_ids), len(self.label_space.names)))
        for row, ids in enumerate(label_ids):
            hot[row, ids] = 1
        return hot

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The evaluation loss, plus classification metrics on the evaluation texts (so that logging, callbacks and
        best-model selection all see e.g. `eval_f1_macro_generate`)."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        texts, label_ids = self._eval_sets.get(metric_key_prefix, (None, None))
        if description == "Evaluation" and texts is not None and dataloader.dataset is not None \
                and len(dataloader.dataset) == len(texts):
            extra = self.classification_metrics(texts, label_ids)
            output.metrics.update({f"{metric_key_prefix}_{key}": value for key, value in extra.items()})
        return output

    # --- saving and the model card ----------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The adapter (or model) and tokenizer as usual, plus the verbalizer and prompt settings. The final save is
        merged when `merge_adapter` is set or the base has no Hub id the adapter could name (a local folder, a GGUF
        file), so that the folder loads on any machine; checkpoints keep the adapter."""
        output_dir = output_dir or self.args.output_dir
        check_not_source(output_dir, self._local_source)
        merge = isinstance(self.model, PeftModel) and not self.saving_checkpoint and (
            self.args.merge_adapter or self._hub_base is None)
        if not merge:
            super()._save(output_dir, state_dict)
            if self.args.should_save:
                self._save_extras(output_dir)
        elif self.args.should_save:
            self.save_merged(output_dir, state_dict)

    def _rebuild_model(self):
        if not isinstance(self._source, (str, os.PathLike)):
            return None
        model = AutoModelForCausalLM.from_pretrained(self._source, **self._init)
        return get_peft_model(model, self._peft_config) if self._peft_config is not None else model

    def _adopt_merged(self, merged) -> None:
        self.classifier.model = merged

    def _save_extras(self, output_dir: str) -> None:
        """The verbalizer and prompt settings, which `InstructionClassifier.from_pretrained` reads."""
        self.classifier.save_settings(output_dir)

    def _adaptation_kind(self) -> tuple[str, str]:
        return "LoRA" if hasattr(self.model, "peft_config") else "full fine-tuning", self.args.quantization

    def _own_card_facts(self, adaptation: AdaptationFacts) -> dict:
        args, space = self.args, self.label_space
        hyperparameters = self._hyperparameter_rows(
            {"learning rate": args.learning_rate},
            {"max length (prompt + answer)": args.max_length, "loss": "completion only (answer tokens)"},
            adaptation,
        )
        extra = {
            "prompt_example": self.prompt.render(self.processing_class, self.verbalizer, self.train_texts[0][:300]),
            "use_chat_template": self.prompt.use_chat_template,
            "verbalizer": [{"name": n, "text": t} for n, t in zip(space.names, self.verbalizer.texts)],
            "delimiter": self.verbalizer.delimiter if space.multi_label else None,
            "scoring_metrics": None,
        }
        # Cards written during training (TRL writes one per checkpoint, on the main process) classify nothing; an
        # untrained recipe's card evaluates on demand where a single process runs.
        if (self._card_evaluation is None and self.eval_texts is not None and not self.is_in_train
                and self.accelerator.num_processes == 1):
            self._card_evaluation = self._evaluate_texts(self.eval_texts, self.eval_label_ids, "evaluation")[1]
        if self._card_evaluation is not None:
            extra["scoring_metrics"] = self._card_evaluation.secondary_metrics
        return dict(
            base_model=self._base_model_id or getattr(self.model, "name_or_path", None) or "",
            train_labels=self._references(self.train_label_ids),
            train_texts=self.train_texts,
            split_lengths={"train": [len(ids) for ids in self.train_dataset["input_ids"]],
                           **({"evaluation": [len(ids) for ids in first_split(self.eval_dataset)["input_ids"]]}
                              if self.eval_dataset is not None else {})},
            hyperparameters=hyperparameters,
            evaluation=self._card_evaluation,
            extra=extra,
        )
