"""What both classifier trainers share, as TRL's `_BaseTrainer` holds what its trainers share.

`LastTokenTrainer` (a `transformers.Trainer`) and `InstructionTrainer` (a TRL `SFTTrainer`) fine-tune a causal LM
into a classifier in two different ways, but record the same facts about where the backbone came from, evaluate raw
rows for the model card the same way, save a merged model with the same steps and describe training in one card
layout. Kept in one place, those parts cannot drift apart; each trainer implements only the hooks in `HOOKS`.
"""

import os
import warnings
from dataclasses import dataclass

from peft import PeftModel
from transformers import set_seed

from .cards.model_card import CardFacts, EvaluationFacts, lora_rows, parameter_counts, write_model_card
from .hub import CheckpointSaves, base_revision, check_not_source, hub_base, local_source
from .sharding import check_sharding_takes_effect, shard_on_cpu
from .labels import build_label_space
from .streaming import is_stream

# `from_pretrained` options that also reach the Hub when the backbone's commit is resolved.
HUB_KEYS = ("token", "cache_dir", "local_files_only")


@dataclass
class AdaptationFacts:
    """How the model was adapted, as trained: a merged save replaces the model (its adapters and quantization gone),
    so these are measured before it and kept."""

    method: str  # "LoRA" or "full fine-tuning"
    trainable: int
    total: int
    quantization: str  # "none", "4bit" or "8bit"
    hyperparameters: dict  # the card's LoRA rows (rank, alpha, dropout, target modules)


class ClassifierTrainerMixin(CheckpointSaves):
    """Base of both trainers (first in their bases, before `Trainer` / `SFTTrainer`).

    Each trainer implements the hooks named in `HOOKS`; the methods here are the shared steps around them. A method
    both trainers define that is neither a hook nor in `FRAMEWORK_OVERRIDES` is a duplicate that belongs here
    (tests/test_trainer_base.py checks it).
    """

    # The hooks this base calls, which each trainer implements (`_save_extras` and `_adopt_merged` have defaults).
    HOOKS = (
        "_evaluation_facts",  # (raw rows, split) -> (EvaluationFacts for the card, metrics keyed `<split>_...`)
        "_adaptation_kind",  # -> (method, quantization) of the model being trained
        "_own_card_facts",  # (AdaptationFacts) -> the CardFacts fields that are the trainer's own
        "_after_training",  # what follows `train()`: calibration, the card's evaluation
        "_adopt_merged",  # (merged model) -> None, before a merged save writes it
        "_rebuild_model",  # -> a new copy of the model as built before training (a merged save under FSDP)
        "_save_extras",  # (folder) -> None, what a save writes beside the model
        "calibrate",  # the public post-training fitting step (temperature and/or decision thresholds)
        "classify",  # (raw texts, ...) -> results in the one format (`TextClassifier.classify`'s)
    )
    # `Trainer` / `SFTTrainer` methods each trainer overrides in its own way.
    FRAMEWORK_OVERRIDES = ("__init__", "compute_loss", "_save")

    card_template = "last_token"  # hf_clf_ext/cards/<card_template>.md

    # --- set-up ------------------------------------------------------------------------------------------------------

    def _setup(self, model, args, train_dataset, labels, init_kwargs: dict) -> None:
        """The checks and records both trainers make before a model loads: a training set, the Hub id an adapter
        save can name as its base (none for a local folder or a GGUF file, which save merged instead), the folder
        the model loads from (never saved over), the seed (before any weights are initialised, so that runs and
        resumed runs start alike) and the label space of the training data."""
        if train_dataset is None:
            raise ValueError(f"{self._trainer_name} needs a train_dataset.")
        check_sharding_takes_effect(args)
        if is_stream(train_dataset) and args.max_steps <= 0:
            raise ValueError("The train_dataset is a stream (an IterableDataset), which has no length: set max_steps "
                             "(the number of optimizer steps to train), as epochs cannot be counted.")
        self._hub_base = None if init_kwargs.get("gguf_file") else hub_base(model)
        self._base_model_id = args.base_model_id or self._hub_base
        self._local_source = local_source(model)
        check_not_source(args.output_dir, self._local_source)
        set_seed(args.seed)
        self.label_space = build_label_space(train_dataset, args.label_column, labels)
        self._adaptation: AdaptationFacts | None = None  # kept across a merged save
        self._card_evaluation: EvaluationFacts | None = None  # the split the card reports, evaluated once
        self._base_revision = None

    @property
    def _trainer_name(self) -> str:
        """The public trainer class this one is (a subclass such as the distillation trainer names its parent)."""
        for cls in type(self).__mro__:
            if ClassifierTrainerMixin in cls.__bases__:
                return cls.__name__
        return type(self).__name__

    def _record_base_revision(self, source, loaded, init_kwargs: dict) -> None:
        """The commit the backbone was loaded from, so that an adapter save loads its base there whatever the branch
        holds later. `init_kwargs` load a name only (`revision` among them then); a model object records its own
        revision, or the default branch's is resolved now. `source` is what the trainer was given, `loaded` the
        model it loaded from it (the same object where it loads later)."""
        keys = HUB_KEYS + (("revision",) if isinstance(source, (str, os.PathLike)) else ())
        hub_kwargs = {key: init_kwargs[key] for key in keys if key in init_kwargs}
        self._base_revision = base_revision(loaded, self._hub_base, hub_kwargs)

    def _pin_adapter_revision(self, model) -> None:
        """adapter_config.json's `revision` (read by PEFT when it loads the base) set to the recorded commit."""
        if self._base_revision and isinstance(model, PeftModel):
            for adapter_config in model.peft_config.values():
                adapter_config.revision = self._base_revision

    def create_accelerator_and_postprocess(self):
        """`Trainer`'s accelerator, with FSDP2 switched on for CPU workers where it was asked for (accelerate would
        run them as DDP: `sharding.shard_on_cpu`)."""
        super().create_accelerator_and_postprocess()
        shard_on_cpu(self)

    # --- training and evaluation -------------------------------------------------------------------------------------

    def train(self, *args, **kwargs):
        """Train, then run the trainer's post-training steps (`_after_training`) on every process, so that writing
        the card or pushing later predicts nothing."""
        output = super().train(*args, **kwargs)
        self._after_training()
        return output

    def _after_training(self) -> None:
        raise NotImplementedError

    def calibrate(self, *args, **kwargs):
        raise NotImplementedError

    def classify(self, texts, **kwargs) -> list[dict]:
        raise NotImplementedError

    def evaluate_dataset(self, dataset, metric_key_prefix: str = "test") -> dict[str, float]:
        """Metrics on raw rows (text and label columns), prepared like the evaluation data, keyed
        `<metric_key_prefix>_<metric>`. A `"test"` split is held out from training, checkpoint selection and
        calibration, so the model card reports it."""
        facts, metrics = self._evaluation_facts(dataset, metric_key_prefix)
        if metric_key_prefix == "test":
            self._card_evaluation = facts
        return metrics

    def _evaluation_facts(self, dataset, split: str) -> tuple[EvaluationFacts, dict]:
        raise NotImplementedError

    # --- adaptation, merged save -------------------------------------------------------------------------------------

    def _adaptation_facts(self) -> AdaptationFacts:
        """How the model was adapted, as trained (kept from before a merged save)."""
        if self._adaptation is not None:
            return self._adaptation
        method, quantization = self._adaptation_kind()
        trainable, total = parameter_counts(self.model)
        return AdaptationFacts(method, trainable, total, quantization, lora_rows(self.model))

    def _adaptation_kind(self) -> tuple[str, str]:
        raise NotImplementedError

    def save_merged(self, output_dir: str, state_dict: dict | None = None) -> None:
        """Merge the LoRA adapters into the backbone (de-quantizing a 4-bit/8-bit one) and save a plain model, which
        loads whole on any machine. The trainer's model is the merged model afterwards.

        Under FSDP every process holds a shard of each weight: call it on every process (the weights are gathered,
        or pass the `state_dict` `Trainer.save_model` gathered); the main process rebuilds the model as the trainer
        built it, loads them and merges, the others keep their shards."""
        check_not_source(output_dir, self._local_source)
        self._adaptation = self._adaptation_facts()
        model = self.model
        if self.is_fsdp_enabled:
            if state_dict is None:
                state_dict = self.accelerator.get_state_dict(self.model)  # a collective: every process
            if not self.args.should_save:
                return
            model = self._unsharded_model(state_dict)
        merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
        if getattr(merged, "hf_quantizer", None) is not None:
            merged = merged.dequantize()
        self._adopt_merged(merged)
        self.model = merged
        merged.save_pretrained(output_dir)
        self.processing_class.save_pretrained(output_dir)
        self._save_extras(output_dir)

    def _unsharded_model(self, state_dict: dict):
        """The trained model whole, from the state dict gathered from every process: rebuilt as the trainer built it
        (`_rebuild_model`, without its trained weights) and loaded strictly."""
        rebuilt = self._rebuild_model()
        if rebuilt is None:
            raise ValueError(
                f"{self._trainer_name} was given a model object, which it cannot rebuild whole after FSDP sharded it: "
                "pass the model as a name or path to save it merged under FSDP."
            )
        rebuilt.load_state_dict(state_dict, strict=True)
        return rebuilt

    def _rebuild_model(self):
        """Hook: a new copy of the model as the trainer built it before training (None where it cannot)."""
        return None

    def _adopt_merged(self, merged) -> None:
        """Hook: adjust the merged model (its config) or the trainer's references to the model, before saving."""

    def _save_extras(self, output_dir: str) -> None:
        """Hook: files a save writes beside the model and tokenizer."""

    # --- model card --------------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """README.md with training facts and metrics, plus plots and `eval_results.json`, in `args.output_dir`
        (what `push_to_hub` uploads), from the `card_template` template."""
        if self.is_world_process_zero():
            write_model_card(self.card_facts(model_name, dataset_name, tags), self.args.output_dir,
                             template=self.card_template)

    def card_facts(self, model_name=None, dataset_name=None, tags=None) -> CardFacts:
        """What the card says; the fields common to both trainers here, the rest from `_own_card_facts`."""
        args, space = self.args, self.label_space
        adaptation = self._adaptation_facts()
        return CardFacts(
            model_name=model_name or args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)),
            label_names=space.names,
            multi_label=space.multi_label,
            max_length=args.max_length,
            trainable_parameters=adaptation.trainable,
            total_parameters=adaptation.total,
            quantization=adaptation.quantization,
            adaptation=adaptation.method,
            dataset_name=dataset_name,
            tags=list(tags or []),
            **self._own_card_facts(adaptation),
        )

    def _own_card_facts(self, adaptation: AdaptationFacts) -> dict:
        raise NotImplementedError

    def _hyperparameter_rows(self, learning_rates: dict, own: dict, adaptation: AdaptationFacts) -> dict:
        """The card's hyperparameter table: the trainer's learning rate rows, the schedule both share, the trainer's
        own rows, the seed, then the LoRA rows."""
        args = self.args
        scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
        return {
            **learning_rates,
            "epochs (max / trained)": f"{args.num_train_epochs:g} / {self.state.epoch or 0:.2f}",
            "batch size x accumulation": f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}",
            "optimizer": getattr(args.optim, "value", args.optim),
            "scheduler (warmup)": f"{scheduler} ({args.warmup_steps:g})",
            "mixed precision": mixed_precision(args),
            **own,
            "seed": args.seed,
            **adaptation.hyperparameters,
        }


def mixed_precision(args) -> str:
    """The autocast a run trains under, from its training arguments after the jobs' checks ("bf16 autocast", "fp16
    autocast" or "none"): what ran, not what the config asked. On a CPU the jobs keep `bf16` only where it is native,
    and one config trained the main job to test macro-F1 0.976 in float32 and 0.960 under bf16 autocast (same seed),
    so cards, tuning trials and benchmark runs record it."""
    return "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "none"


def deprecated_alias(old: str, new: str):
    """A method `old` that warns once (FutureWarning) and calls `new`, for a public name that was renamed."""
    def alias(self, *args, **kwargs):
        if not alias.warned:
            alias.warned = True
            warnings.warn(f"{type(self).__name__}.{old} is now {new}.", FutureWarning, stacklevel=2)
        return getattr(self, new)(*args, **kwargs)

    alias.__name__ = old
    alias.warned = False
    alias.__doc__ = f"Deprecated: use `{new}`."
    return alias
