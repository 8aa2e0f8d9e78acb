"""What a transformers user writes without this project, shared by the quality and speed benchmarks: the stock
`AutoModelForSequenceClassification` with PEFT LoRA r=8 on every projection, trained by the stock `Trainer` with one
learning rate and no pooling suffix. Also what every benchmark's results share: the machine's name, mean ± std."""

import platform
import statistics

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def machine() -> str:
    """The GPU, or the CPU with whether it computes bf16 natively: machines of one name ("AMD EPYC") differ there,
    and the configs' `bf16: true` then trains under bf16 autocast on one and in float32 on the other (see
    `precision`), with other results and times."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    native = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    return f"{_cpu_name()}, {native}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def precision(args) -> str:
    """What a training run computed in (`trainer_base.mixed_precision`), with no autocast named "float32": the bundled
    models' weights are float32."""
    from hf_clf_ext.trainer_base import mixed_precision

    kind = mixed_precision(args)
    return "float32" if kind == "none" else kind


def mean_std(values) -> str:
    """"mean ± sample standard deviation" over seeds to three decimals; one seed has no spread, so its value alone
    (a "± 0.000" would claim seeds that agree)."""
    values = [float(value) for value in values]
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _cpu_name() -> str:
    """The CPU model (e.g. "AMD EPYC"): CPU speed differs between machines of the same kind, so results name it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stock_classifier(path: str, names: list[str], tokenizer, *, lora: bool = True, **from_pretrained_kwargs):
    """The stock sequence-classification model (LoRA r=8 when `lora`), labelled like ours."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        pad_token_id=tokenizer.pad_token_id, **from_pretrained_kwargs,
    )
    if not lora:
        return model
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.05,
                                            target_modules=LORA_TARGETS))


def stock_encode(split, tokenizer, max_length: int):
    return split.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=max_length), batched=True,
                     remove_columns=["text"])


def stock_training_arguments(output_dir: str, seed: int, **overrides):
    """The embedded default's schedule (5 epochs, batch 8, lr 3e-4, linear warmup 10%, bf16 autocast where the
    hardware has native bf16: our trainer falls back to float32 elsewhere, and so does this one)."""
    from transformers import TrainingArguments

    settings = dict(
        output_dir=output_dir, num_train_epochs=5, per_device_train_batch_size=8, per_device_eval_batch_size=16,
        learning_rate=3e-4, lr_scheduler_type="linear", warmup_steps=0.1, optim="adamw_torch", eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True, metric_for_best_model="f1_macro",
        bf16=torch.cuda.is_available() or torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        use_cpu=not torch.cuda.is_available(), seed=seed, report_to="none", disable_tqdm=True,
        logging_steps=5,
    )
    return TrainingArguments(**{**settings, **overrides})


def minilm_embeddings(texts, max_length: int = 256, batch_size: int = 32):
    """all-MiniLM-L6-v2 sentence embeddings as sentence-transformers computes them (its modules.json: mean of the
    token states over the attention mask, then L2 normalisation; 256 tokens, its max_seq_length), from the bundled
    copy, in batches of similar length. A `(len(texts), 384)` float32 array in input order."""
    import numpy as np
    from transformers import AutoModel, AutoTokenizer

    from hf_clf_ext.bundled import minilm_model_dir
    from hf_clf_ext.texts import length_sorted_batches

    path = minilm_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    out = np.zeros((len(encoded), model.config.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for rows in length_sorted_batches(encoded, batch_size):
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out
