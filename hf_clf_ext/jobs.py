"""Jobs shared by the recipes (`recipes/*.py`) and the `hf-clf` CLI: parse a YAML config plus command-line
overrides, check everything that can be checked before a model loads, then train -> evaluate -> save (-> push),
evaluate a saved model, or predict.
"""

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import fields

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from . import bundled
from .sharding import check_sharding_takes_effect
from .texts import build_texts, text_template
from .labels import check_columns
from .batch import without_nan
from .streaming import is_stream
from .cards.model_card import parameter_counts
from .script_arguments import DistillScriptArguments, ScriptArguments

# The bundled models and data sets (their registry is `bundled.MODELS` and `bundled.DATASETS`), by name: what they
# are, the Hub repos the models come from, the names the cards give the data sets.
BUNDLED_MODELS = {name: description for name, (description, _, _) in bundled.MODELS.items()}
BUNDLED_MODEL_IDS = {name: hub_id for name, (_, hub_id, _) in bundled.MODELS.items()}
BUNDLED_DATASETS = {name: card_name for name, (card_name, _) in bundled.DATASETS.items()}
DATA_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SAVED_MODEL_FILES = ("config.json", "adapter_config.json", "model.safetensors", "adapter_model.safetensors",
                     "tfidf_classifier.json", "tfidf_classifier.safetensors")
RESULTS_FILE = "all_results.json"


class JobError(ValueError):
    """A failure the input causes (config, data, folders), found before or while a job runs: the scripts and the
    CLI print it as one line, `hf-clf: <message>`, and exit with status 1 (`scripts.one_line_errors`)."""


def config_parser(training_arguments_class, script_class=None, extra_class=None):
    """The parser of a job's config and command line: the script's arguments, the training arguments, and a third
    dataclass's when given (`hf-clf tune`'s options)."""
    from trl import TrlParser

    return TrlParser((script_class or ScriptArguments, training_arguments_class,
                      *([extra_class] if extra_class else [])))


def _check_approach_of_config(parser, training_arguments_class, argv) -> None:
    """A config file written for the other approach (its keys unknown here, all of them the other's) is named as
    such, before its values trip the checks of a class they were not written for."""
    argv = list(argv or [])
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return
    import yaml

    from .instruction.config import InstructionConfig
    from .last_token.config import LastTokenConfig

    try:
        with open(argv[argv.index("--config") + 1], encoding="utf-8") as file:
            keys = set(yaml.safe_load(file) or {})
    except (OSError, yaml.YAMLError, TypeError):
        return  # the parser names what is wrong with the file
    known = {action.dest for action in parser._actions}
    for mine, other, name in ((LastTokenConfig, InstructionConfig, "instruction"),
                              (InstructionConfig, LastTokenConfig, "last_token")):
        if training_arguments_class is mine:
            theirs = sorted((keys - known) & {f.name for f in fields(other)})
            if theirs:
                raise JobError(f"this config is for the {name} approach ({', '.join(theirs)} are its keys): run it "
                               f"with `hf-clf train --approach {name}` or recipes/train_{name}.py.")


def parse_config(training_arguments_class, argv: Sequence[str] | None = None, script_class=None, extra_class=None):
    """`(ScriptArguments, training arguments)` from `--config file.yaml` plus `--key value` overrides (and a third
    dataclass's values when `extra_class` is given, e.g. `hf-clf tune`'s options).

    Unknown keys, in the file or on the command line, are errors naming them; so are missing required keys."""
    parser = config_parser(training_arguments_class, script_class, extra_class)
    _check_approach_of_config(parser, training_arguments_class, argv)
    try:
        *parsed, remaining = parser.parse_args_and_config(argv, return_remaining_strings=True)
        script_args, training_args = parsed[:2]
    except ValueError as error:
        raise JobError(f"invalid configuration: {error}") from error
    if remaining:
        unknown = [item.lstrip("-") for item in remaining if item.startswith("--")]
        raise JobError(f"unknown configuration keys {unknown}; see --help for the valid ones.")
    _check_cpu_bf16(training_args)
    check_bundled_name("dataset", getattr(script_args, "dataset", None), BUNDLED_DATASETS)
    check_bundled_name("model_name_or_path", getattr(script_args, "model_name_or_path", None), BUNDLED_MODELS)
    check_one_data_source(script_args)
    if getattr(script_args, "streaming", False):
        from .last_token.config import LastTokenConfig

        if not issubclass(training_arguments_class, LastTokenConfig):
            raise JobError("streaming trains the last-token classifier only: the instruction approach and "
                           "distillation read their training data whole.")
        if training_args.max_steps <= 0:
            raise JobError("streaming training needs max_steps (a stream has no length to count epochs in).")
    try:
        check_sharding_takes_effect(training_args)  # before data or a model loads (the trainers check it too)
    except ValueError as error:
        raise JobError(str(error)) from error
    return (script_args, training_args, parsed[2]) if extra_class else (script_args, training_args)


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool = False,
                     resumable: Sequence[str] = ()) -> None:
    """Refuse to write into a folder that already holds anything: a saved model (ours, a TF-IDF student), an
    interrupted run's checkpoints (checkpoint rotation would delete them and the folder would mix two runs) or the
    user's own files (the card would replace a README.md). `overwrite` or `resuming` allow it; so does a folder
    holding only the files in `resumable` (a distillation's teacher labels, which a rerun resumes from)."""
    if overwrite or resuming or not os.path.isdir(output_dir):
        return
    entries = sorted(name for name in os.listdir(output_dir) if name not in resumable)
    if not entries:
        return
    saved = [name for name in SAVED_MODEL_FILES if os.path.isfile(os.path.join(output_dir, name))]
    checkpoints = [name for name in entries if name.startswith("checkpoint-")]
    if saved:
        what = f"already holds a saved model ({_describe_saved_model(output_dir)})"
    elif checkpoints:
        what = f"holds the checkpoints of an earlier run ({', '.join(checkpoints[:3])})"
    else:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        what = f"is not empty ({shown})"
    raise JobError(
        f"{output_dir} {what}. Choose another output_dir, pass --overwrite_output_dir true to replace what "
        "it holds, or --resume_from_checkpoint true to continue the run whose checkpoints it holds."
    )


def _describe_saved_model(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, "tfidf_classifier.json")):
        return "a TF-IDF student"
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as file:
                config = json.load(file)
            kind = config.get("model_type") or config.get("peft_type") or "model"
            return f"{kind} from {config.get(key) or config.get('text_config', {}).get('_name_or_path', '?')}"
    return "model files"


def _resumes_in(output_dir: str, resume) -> bool:
    """Whether a run resumes from a checkpoint of `output_dir` (its own interrupted run, which may write there), not
    from one elsewhere: that run starts in `output_dir` like a new one, and what the folder holds is checked."""
    if resume is True:
        return True
    return bool(resume) and os.path.abspath(os.path.dirname(os.path.normpath(resume))) == os.path.abspath(output_dir)


def resume_asked(value) -> bool:
    """Whether a config's `resume_from_checkpoint` (a string as the parser leaves it, or a bool or path) asks to
    resume: anything but false / no / none / empty."""
    return value is not None and str(value).lower() not in ("false", "no", "none", "")


def _resume_value(value, output_dir: str):
    """`resume_from_checkpoint` from a config: a checkpoint path, `true` (the last checkpoint in output_dir, which
    must exist), or off."""
    if not resume_asked(value):
        return None
    if str(value).lower() in ("true", "yes"):
        from transformers.trainer_utils import get_last_checkpoint

        if not os.path.isdir(output_dir) or get_last_checkpoint(output_dir) is None:
            raise JobError(f"resume_from_checkpoint is true, but {output_dir} holds no checkpoint.")
        return True
    if not os.path.isdir(value):
        raise JobError(f"resume_from_checkpoint {value} is not a checkpoint folder.")
    return value


def load_splits(script_args: ScriptArguments, pool: bool = False) -> DatasetDict:
    """train / validation / test splits from local files, a saved folder, a Hub dataset or a bundled set;
    with `pool`, also the unlabelled `pool` split (`pool_file`, or the dataset's `pool_split`)."""
    if script_args.dataset in BUNDLED_DATASETS:
        splits = bundled.bundled_splits(script_args.dataset, script_args.bbc_train_per_class,
                                        script_args.bbc_validation_per_class, pool=pool)
    elif script_args.train_file:
        files = {
            split: path
            for split, path in (("train", script_args.train_file), ("validation", script_args.validation_file),
                                ("test", script_args.test_file))
            if path
        }
        splits = DatasetDict({split: read_data_file(path, streaming=script_args.streaming and split == "train")
                              for split, path in files.items()})
    elif script_args.dataset:
        if os.path.isdir(script_args.dataset):
            loaded = load_from_disk(script_args.dataset)
        else:  # streaming: read lazily, nothing of the dataset downloaded whole
            loaded = load_dataset(script_args.dataset, script_args.dataset_config, streaming=script_args.streaming)
        if not isinstance(loaded, dict):
            loaded = {"train": loaded}
        names = {"train": script_args.train_split, "validation": script_args.validation_split,
                 "test": script_args.test_split}
        if pool and not script_args.pool_file:
            names["pool"] = script_args.pool_split
        if names["train"] not in loaded:
            raise JobError(f"{script_args.dataset} has no split {names['train']!r}; it has {list(loaded)}.")
        splits = DatasetDict({split: loaded[name] for split, name in names.items() if name in loaded})
        for split, data in splits.items():
            if split != "train" and is_stream(data):  # read whole: evaluation reads them several times
                splits[split] = Dataset.from_list(list(data), features=data.features)
        if script_args.streaming and not is_stream(splits["train"]):
            splits["train"] = splits["train"].to_iterable_dataset()
    else:
        raise JobError("give a dataset (Hub id, saved folder or 'bundled:bbc_news') or a train_file.")
    if script_args.streaming and script_args.dataset in BUNDLED_DATASETS:
        splits["train"] = splits["train"].to_iterable_dataset()
    if script_args.max_train_samples is not None:
        if script_args.max_train_samples < 1:
            raise JobError(f"max_train_samples must be at least 1, got {script_args.max_train_samples}.")
        train = splits["train"]
        splits["train"] = (train.take(script_args.max_train_samples) if is_stream(train)
                           else train.select(range(min(script_args.max_train_samples, len(train)))))
    if pool:
        if script_args.pool_file:
            splits["pool"] = read_data_file(script_args.pool_file)
        elif "pool" not in splits:
            raise JobError(f"no unlabelled pool: give pool_file, or a dataset with a {script_args.pool_split!r} "
                             "split.")
    return splits


def load_split(dataset: str, split: str, dataset_config: str | None = None) -> Dataset:
    """One named split of a Hub dataset, a saved folder or a bundled set (`train`, `validation`, `test`, `pool`), or
    a ValueError listing the splits there are."""
    check_bundled_name("dataset", dataset, BUNDLED_DATASETS)
    if dataset in BUNDLED_DATASETS:
        loaded = bundled.bundled_splits(dataset, ScriptArguments.bbc_train_per_class,
                                        ScriptArguments.bbc_validation_per_class, pool=True)
    elif os.path.isdir(dataset):
        loaded = load_from_disk(dataset)
    else:
        loaded = load_dataset(dataset, dataset_config)
    if isinstance(loaded, Dataset):
        loaded = DatasetDict(train=loaded)
    if split not in loaded:
        raise ValueError(f"{dataset} has no split {split!r}; its splits are {list(loaded)}.")
    return loaded[split]


def read_data_file(path: str, streaming: bool = False) -> Dataset:
    builder = DATA_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None:
        raise JobError(f"cannot read {path}: use a .csv, .json, .jsonl or .parquet file.")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise JobError(f"cannot read {path}: no such readable file.")
    try:
        return load_dataset(builder, data_files=path, split="train", streaming=streaming)
    except Exception as error:  # noqa: BLE001 - the datasets error is chained
        raise JobError(f"cannot read {path} as {builder}: {error}") from error


def check_data(splits: DatasetDict, training_args) -> None:
    """Every split has the text and label columns the config names (the unlabelled pool, the text columns), the text
    template parses, and every row of a labelled split read whole has a text (a streamed training split is checked
    as it is read; the pool by distillation, with its length limit): before a model loads."""
    try:
        _, columns = text_template(training_args.text_columns, training_args.text_template)
    except ValueError as error:
        raise JobError(f"text_template: {error}") from error
    for split, dataset in splits.items():
        try:
            check_columns(dataset, [*columns, *[training_args.label_column] * (split != "pool")], split)
            if split != "pool" and not is_stream(dataset):
                build_texts(dataset, training_args.text_columns, training_args.text_template, split)
        except ValueError as error:
            raise JobError(str(error)) from error


def check_one_data_source(script_args) -> None:
    """A dataset and data files together are refused: `load_splits` reads the dataset, so the files would be ignored
    (the main job's config, `dataset: bundled:bbc_news`, plus `--train_file mine.csv` trained on BBC News silently)."""
    dataset = getattr(script_args, "dataset", None)
    files = [key for key in ("train_file", "validation_file", "test_file") if getattr(script_args, key, None)]
    if dataset and files:
        raise JobError(f"dataset {dataset!r} and {', '.join(files)} both name the data, and only the dataset would be "
                       'read: to use your files pass --dataset "" (or drop dataset from the config); to use the '
                       "dataset drop the files.")
    if not dataset:  # the options that choose within a dataset choose nothing among files
        chosen = [f.name for f in fields(script_args)
                  if f.name in ("dataset_config", "train_split", "validation_split", "test_split", "pool_split")
                  and getattr(script_args, f.name) != f.default]
        if chosen:
            raise JobError(f"{', '.join(chosen)} choose within a dataset, and this config reads data files: drop "
                           "them, or give the dataset.")


def check_bundled_name(key: str, value, known) -> None:
    """A `bundled:` name that is not one of `known` is a typo, refused here (it would go to the Hub, which fails
    with a connection error or a missing repo that never says so)."""
    if isinstance(value, str) and value.startswith("bundled:") and value not in known:
        raise JobError(f"{key} {value!r} is not bundled; the bundled ones are {sorted(known)}.")


def resolve_model(script_args: ScriptArguments) -> tuple[str, dict]:
    """The model path and its `from_pretrained` options (bundled models converted once to an ordinary folder)."""
    path = script_args.model_name_or_path
    if path in BUNDLED_MODELS:
        path = bundled.MODELS[path][2]()
    kwargs = {key: getattr(script_args, key) for key in ("gguf_file", "dtype", "attn_implementation")}
    return path, {key: value for key, value in kwargs.items() if value}


def _check_cpu_bf16(training_args) -> None:
    """bf16 autocast on a CPU without native bf16 (no AVX-512): oneDNN falls back to reference kernels, measured 75x
    slower than float32 for the model's matrix products on an AVX2-only AMD EPYC. Train in float32 there."""
    import torch

    if training_args.bf16 and training_args.use_cpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("hf-clf: this CPU has no native bf16 (AVX-512), where bf16 autocast runs many times slower than "
              "float32: training in float32 instead (bf16: false).", file=sys.stderr)
        training_args.bf16, training_args.mixed_precision = False, "no"


def prepare(training_arguments_class, argv=None, approach: str = "last_token"):
    """Everything before a model loads: config, output folder (nothing in it that would load instead of the
    `approach` model this run saves), data and columns."""
    script_args, training_args = parse_config(training_arguments_class, argv)
    training_args.resume_from_checkpoint = _resume_value(training_args.resume_from_checkpoint,
                                                         training_args.output_dir)
    check_output_dir(training_args.output_dir, script_args.overwrite_output_dir,
                     _resumes_in(training_args.output_dir, training_args.resume_from_checkpoint))
    if os.path.isdir(training_args.output_dir):  # overwritten or resumed: an old classifier's files must not win
        from .classifier import check_nothing_loads_instead

        try:
            check_nothing_loads_instead(training_args.output_dir, approach)
        except ValueError as error:
            raise JobError(str(error)) from error
    splits = load_splits(script_args)
    check_data(splits, training_args)
    return script_args, training_args, splits


def prepare_distillation(argv=None):
    """Everything before a model loads, for `hf-clf distill`: config, output folder, labelled splits, and the pool's
    texts (empty or over-long ones are errors here, before the teacher loads)."""
    from .distillation.config import DistillationConfig
    from .distillation.teacher_labels import check_pool_texts

    script_args, args = parse_config(DistillationConfig, argv, DistillScriptArguments)
    if args.student_type != "tfidf" and not script_args.model_name_or_path:
        raise JobError(f"a {args.student_type} student needs model_name_or_path (its backbone).")
    if args.student_type == "tfidf" and script_args.model_name_or_path:
        raise JobError(f"a tfidf student has no backbone: model_name_or_path {script_args.model_name_or_path!r} would "
                       "be ignored (drop it, or choose a last_token or sequence_classification student).")
    labels_file = args.teacher_labels_path
    in_output = os.path.dirname(os.path.abspath(labels_file)) == os.path.abspath(args.output_dir)
    args.resume_from_checkpoint = _resume_value(args.resume_from_checkpoint, args.output_dir)
    check_output_dir(args.output_dir, script_args.overwrite_output_dir,
                     _resumes_in(args.output_dir, args.resume_from_checkpoint),
                     resumable=[os.path.basename(labels_file), f"{os.path.basename(labels_file)}.parts"] if in_output
                     else [])
    splits = load_splits(script_args, pool=True)
    check_data(splits, args)
    try:
        pool_texts = check_pool_texts(build_texts(splits["pool"], args.text_columns, args.text_template, "pool"),
                                      args.max_pool_chars)
    except (TypeError, ValueError) as error:
        raise JobError(str(error)) from error
    return script_args, args, splits, pool_texts


def distill(script_args, args, splits: DatasetDict, pool_texts: list[str]) -> dict:
    """Teacher labels the pool (resumably) -> the student trains on it -> test split, save, card."""
    from .distillation.trainer import run_distillation

    model, model_kwargs = resolve_model(script_args) if script_args.model_name_or_path else (None, {})
    if args.base_model_id is None:
        args.base_model_id = BUNDLED_MODEL_IDS.get(script_args.model_name_or_path)
    results = run_distillation(args, splits, pool_texts, model, model_kwargs, dataset_name(script_args))
    if args.process_index == 0:
        with open(os.path.join(args.output_dir, RESULTS_FILE), "w", encoding="utf-8") as file:
            json.dump(without_nan(results), file, indent=2, allow_nan=False)
    return results


def dataset_name(script_args: ScriptArguments) -> str:
    """How the model card names the training data: a Hub id as it is, a bundled set or a file by name."""
    if script_args.dataset in BUNDLED_DATASETS:
        return BUNDLED_DATASETS[script_args.dataset]
    if script_args.dataset:
        return os.path.basename(os.path.normpath(script_args.dataset)) if os.path.isdir(script_args.dataset) \
            else script_args.dataset
    stem = os.path.splitext(os.path.basename(script_args.train_file))[0]
    return os.path.basename(os.path.dirname(os.path.abspath(script_args.train_file))) if stem == "train" else stem


def train_last_token(script_args: ScriptArguments, training_args, splits: DatasetDict) -> dict:
    from .last_token.trainer import LastTokenTrainer

    if training_args.base_model_id is None:
        training_args.base_model_id = BUNDLED_MODEL_IDS.get(script_args.model_name_or_path)
    model, model_kwargs = resolve_model(script_args)
    trainer = LastTokenTrainer(
        model, args=training_args, train_dataset=splits["train"], eval_dataset=splits.get("validation"),
        labels=script_args.labels, model_init_kwargs=model_kwargs,
    )
    return _train_evaluate_save(trainer, splits, dataset_name(script_args))


def train_instruction(script_args: ScriptArguments, training_args, splits: DatasetDict) -> dict:
    from .instruction.trainer import InstructionTrainer

    model, model_kwargs = resolve_model(script_args)
    if model_kwargs:
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), **model_kwargs}
    trainer = InstructionTrainer(
        model, args=training_args, train_dataset=splits["train"], eval_dataset=splits.get("validation"),
        labels=script_args.labels,
    )
    return _train_evaluate_save(trainer, splits, dataset_name(script_args))


def _train_evaluate_save(trainer, splits: DatasetDict, dataset: str) -> dict:
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    results = {"train_seconds": time.perf_counter() - started, "world_size": trainer.args.world_size,
               "distributed_type": trainer.accelerator.distributed_type.value,  # what ran, not what was asked
               "streamed": is_stream(splits["train"])}
    results["trainable_parameters"] = parameter_counts(trainer.model)[0]
    if "validation" in splits:
        results.update(trainer.evaluate())
    if "test" in splits:
        started = time.perf_counter()
        results.update(trainer.evaluate_dataset(splits["test"], metric_key_prefix="test"))
        results["test_examples_per_second"] = len(splits["test"]) / (time.perf_counter() - started)
    if trainer.is_fsdp_enabled:  # checkpoints may be sharded; the final model must be whole
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model()
    trainer.create_model_card(dataset_name=dataset)  # writes on the main process only
    if trainer.is_world_process_zero():
        with open(os.path.join(trainer.args.output_dir, RESULTS_FILE), "w", encoding="utf-8") as file:
            json.dump(without_nan(results), file, indent=2, allow_nan=False)
    if trainer.args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset)
    return results


def print_results(results: dict, output_dir: str, approach: str, stream=None) -> None:
    """The metrics table and how to load the model."""
    stream = stream or sys.stdout
    rows = [(key, value) for key, value in results.items() if isinstance(value, (int, float))]
    width = max(len(key) for key, _ in rows) if rows else 10
    print("\n" + "-" * (width + 14), file=stream)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>10.4f}" if isinstance(value, float) else f"{key:<{width}}  {value:>10}",
              file=stream)
    print("-" * (width + 14), file=stream)
    print(f"\nSaved to {output_dir} (model card: {output_dir}/README.md). Load it with:\n", file=stream)
    print("    from hf_clf_ext import TextClassifier\n"
          f"    classifier = TextClassifier.from_pretrained({output_dir!r})\n"
          "    classifier.classify(['some text'])\n", file=stream)
    if approach == "last_token":
        print("or, in plain transformers:\n\n"
              "    import hf_clf_ext\n"
              "    from transformers import AutoModelForSequenceClassification, pipeline\n"
              f"    model = AutoModelForSequenceClassification.from_pretrained({output_dir!r})\n"
              f"    classifier = pipeline('text-classification', model={output_dir!r}, top_k=None)\n", file=stream)
