"""The adapter around a last-token classifier: (Q)LoRA wrapping, the default LoRA config, a user's PEFT config
made to train and save the head, and finding the classifier inside PEFT, DDP and `torch.compile` wrappers. The
trainer builds every model through them, also the fresh one each `hf-clf tune` trial gets."""

import dataclasses

from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

from .config import LastTokenConfig
from .modeling_last_token import HEAD_MODULE, LastTokenClassifierForSequenceClassification


def prepare_peft(model, args: LastTokenConfig, peft_config) -> PeftModel:
    """The classifier wrapped for (Q)LoRA training. A k-bit backbone goes through PEFT's
    `prepare_model_for_kbit_training` (float32 norms, input gradients for checkpointing), except where FSDP or
    ZeRO-3 shards a 4-bit one: sharding flattens tensors of one dtype, so every parameter (norms, head, adapters)
    stays in the quant storage dtype and gradient checkpointing is enabled on its own, as TRL does for sharded
    QLoRA."""
    sharded = args.sharded_qlora_dtype() if getattr(model, "is_loaded_in_4bit", False) else None
    if sharded is not None:
        for param in model.parameters():  # the head (float32 by default) and anything loaded in another dtype
            if param.__class__.__name__ != "Params4bit" and param.dtype != sharded:
                param.data = param.data.to(sharded)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
            model.enable_input_require_grads()
        return get_peft_model(model, peft_config, autocast_adapter_dtype=False)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    return get_peft_model(model, peft_config)


def default_lora_config(args: LastTokenConfig) -> LoraConfig:
    """LoRA on every attention and MLP projection; the head trained in full and saved with the adapter."""
    return LoraConfig(
        task_type="SEQ_CLS",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        modules_to_save=[HEAD_MODULE],
    )


def classification_peft_config(config):
    """A user's PEFT config made to train and save the head: task SEQ_CLS, `score` among `modules_to_save`."""
    task_type = getattr(config, "task_type", None)
    if task_type not in (None, "SEQ_CLS", TaskType.SEQ_CLS):
        raise ValueError(f"peft_config.task_type must be 'SEQ_CLS' (or unset) for a classifier, got {task_type!r}.")
    modules = list(getattr(config, "modules_to_save", None) or [])
    return dataclasses.replace(
        config, task_type=TaskType.SEQ_CLS, modules_to_save=modules + [HEAD_MODULE] * (HEAD_MODULE not in modules)
    )


def unwrap_classifier(model) -> LastTokenClassifierForSequenceClassification:
    """The last-token classifier inside `model` (a PEFT model, a DDP or accelerate wrapper, a compiled module)."""
    while not isinstance(model, LastTokenClassifierForSequenceClassification):
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        elif hasattr(model, "module"):  # DDP / accelerate wrappers
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            raise TypeError(f"Expected a last-token classifier, got {type(model).__name__}.")
    return model


def is_head_parameter(name: str) -> bool:
    """Whether the parameter `name` (as `named_parameters` gives it, at any wrapping depth) belongs to the head."""
    return f".{HEAD_MODULE}." in f".{name}"
