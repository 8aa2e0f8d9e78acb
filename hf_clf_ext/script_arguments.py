"""The arguments of a job beside its training arguments: the model and the data (`ScriptArguments`, as TRL's scripts
take them), and for a distillation the unlabelled pool (`DistillScriptArguments`). A YAML config and `--key value`
overrides fill them (`jobs.parse_config`); `hf-clf <command> --help` lists their fields."""

from dataclasses import dataclass, field


@dataclass
class ScriptArguments:
    """What to train on: the model and the data."""

    model_name_or_path: str = field(
        metadata={"help": "A causal LM (Hub id or local folder), 'bundled:smollm2-135m-instruct' or "
                  "'bundled:gemma3-270m'; a distillation's encoder student may also be 'bundled:all-minilm-l6-v2'."}
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "A Hub dataset id, a folder saved with `save_to_disk`, or a bundled set: "
                  "'bundled:bbc_news', 'bundled:bbc_news_headlines' (the same articles, headlines only), "
                  "'bundled:rotten_tomatoes' (review snippets, sentiment). Alternatively give train_file (and "
                  "validation_file / test_file)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local CSV / JSON(L) / Parquet training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file (same formats)."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (same formats)."})
    train_split: str = field(default="train", metadata={"help": "Training split name in `dataset`."})
    validation_split: str = field(default="validation", metadata={"help": "Validation split name in `dataset`."})
    test_split: str = field(default="test", metadata={"help": "Test split name in `dataset`."})
    labels: list[str] | None = field(
        default=None, metadata={"help": "Class names in id order, when the label column holds bare ids."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the training split lazily (datasets' streaming=True: a local file or a Hub dataset), "
                  "tokenised as training reads it and never held whole (last-token training; needs max_steps). The "
                  "label space comes from `labels`, or from one pass over the label column."},
    )
    gguf_file: str | None = field(default=None, metadata={"help": "Load the model from this GGUF file in its folder."})
    dtype: str | None = field(default=None, metadata={"help": "Weights dtype: 'bfloat16', 'float16', 'float32'."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "e.g. 'sdpa', 'eager', 'flash_attention_2'."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a model already saved in output_dir (otherwise that is an error)."}
    )
    bbc_train_per_class: int = field(default=20, metadata={"help": "bundled data sets: training examples per class."})
    bbc_validation_per_class: int = field(default=20,
                                          metadata={"help": "bundled data sets: validation examples per class."})


@dataclass
class DistillScriptArguments(ScriptArguments):
    """What to distill on: the student's backbone, the labelled splits and the unlabelled pool."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "The student's backbone: a causal LM (last_token student), any sequence classifier "
                  "(sequence_classification student); unused by a tfidf student."},
    )
    pool_file: str | None = field(
        default=None, metadata={"help": "Unlabelled texts: a CSV / JSON(L) / Parquet file with the text columns."}
    )
    pool_split: str = field(
        default="pool",
        metadata={"help": "The split of `dataset` holding the unlabelled texts (bundled:bbc_news: every article "
                  "outside test, train and validation whose text none of them holds). Its labels, if any, are never "
                  "read."},
    )
