"""`hf-clf`: train, evaluate and predict from the command line, over the same YAML configs as the recipes.

    hf-clf train --approach last_token --config recipes/configs/smollm2_135m_bbc_last_token.yaml [--key value ...]
    hf-clf evaluate --model outputs/smollm2-bbc --dataset bundled:bbc_news --split test
    hf-clf predict --model outputs/smollm2-bbc "Shares rose after the results." < more_texts.txt
    hf-clf predict --model outputs/smollm2-bbc --input_file texts.jsonl --output_file predictions.jsonl  # any size
    hf-clf export --model outputs/smollm2-bbc --output outputs/smollm2-bbc-stock    # stock architecture, for vLLM
    hf-clf distill --config recipes/configs/distill_smollm2_bbc_tfidf.yaml   # teacher labels a pool -> student
    hf-clf tune --config recipes/configs/smollm2_135m_bbc_last_token.yaml --n_trials 8   # Optuna, LoRA included

Each command's --help lists its options. A failure the input causes (a missing file, an unknown split, an empty
text, a folder that is not a classifier) prints one line `hf-clf: <what is wrong>` and exits with status 1; argument
errors exit with 2.

This module sits outside the `hf_clf_ext` package on purpose: importing the package registers the classifier with
transformers' Auto classes, which imports torch (seconds). Help, argument errors and command dispatch run before
anything of the package is imported; `train` and `distill` read their options from the training configs, so their
--help imports them.
"""

import argparse
import json
import os
import sys

APPROACHES = ("last_token", "instruction")
COMMANDS = ("train", "evaluate", "predict", "export", "distill", "tune")
METHOD_CHOICES = ("generate", "score")  # hf_clf_ext.instruction.METHODS, spelled here to parse without torch
ENGINE_CHOICES = ("torch", "vllm", "onnxruntime")  # hf_clf_ext.engines.ENGINES, likewise


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-clf: unknown command {command!r}; use {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}.",
              file=sys.stderr)
        return 2
    return {"train": train, "evaluate": evaluate, "predict": predict, "export": export, "distill": distill,
            "tune": tune}[command](rest)


def fail(message) -> SystemExit:
    """The one-line error of a failure the user can fix (raise it)."""
    return SystemExit(f"hf-clf: {message}")


def train(argv) -> int:
    """The recipes' own jobs (`hf_clf_ext.scripts`): the same config, checks and result table."""
    parser = argparse.ArgumentParser(prog="hf-clf train", add_help=False)
    parser.add_argument("--approach", choices=APPROACHES, default="last_token")
    known, rest = parser.parse_known_args(argv)
    if known.approach == "last_token":
        from hf_clf_ext.scripts.train_last_token import main as run
    else:
        from hf_clf_ext.scripts.train_instruction import main as run
    run(rest)
    return 0


def distill(argv) -> int:
    """A trained classifier labels an unlabelled pool, which a student learns (decoder, encoder or TF-IDF)."""
    from hf_clf_ext.scripts.distill import main as run

    run(argv)
    return 0


def tune(argv) -> int:
    """Optuna over a last-token config's learning rates, LoRA and epochs; the best trial written as a config."""
    from hf_clf_ext.scripts.tune import main as run

    run(argv)
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="A classifier of either approach: a folder or a Hub repo id.")
    parser.add_argument("--method", choices=METHOD_CHOICES, default=None,
                        help="Instruction models: constrained decoding (the default) or label scoring.")
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="Run a last-token classifier through torch.compile (bucketed shapes); by default only "
                             "long jobs on hardware where it pays are compiled (see hf_clf_ext.last_token.compiled).")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, default=None,
                        help="Where the forward runs: by default onnxruntime for an ONNX export and torch (this "
                             "process) otherwise; vllm: a last-token classifier's stock export served by vLLM from "
                             "its own virtualenv, in one process.")
    parser.add_argument("--vllm_python", default=None, help="The python of vLLM's virtualenv, for --engine vllm "
                        "(default: $HF_CLF_EXT_VLLM_PYTHON).")
    parser.add_argument("--vllm_options", default=None, help="A JSON object of vLLM LLM() arguments for --engine "
                        "vllm, e.g. '{\"tensor_parallel_size\": 2}'.")


def evaluation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clf evaluate", description="Metrics of a saved model on a labelled "
                                     "split, as JSON.")
    _model_options(parser)
    parser.add_argument("--dataset", help="Hub id, saved folder or 'bundled:bbc_news'.")
    parser.add_argument("--dataset_config", default=None, help="Configuration name of a Hub dataset.")
    parser.add_argument("--file", help="A CSV / JSON(L) / Parquet file (the split to evaluate).")
    parser.add_argument("--split", default="test", help="The split of --dataset to evaluate (default: test).")
    parser.add_argument("--text_columns", nargs="+", default=["text"])
    parser.add_argument("--text_template", default=None)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="Class names in id order, when the label column holds bare class ids.")
    parser.add_argument("--drop_unknown_labels", action="store_true",
                        help="Drop rows whose labels the model does not know (and report how many).")
    return parser


def evaluate(argv) -> int:
    """Metrics of a saved model on a labelled split, as JSON."""
    args = evaluation_parser().parse_args(argv)
    if bool(args.dataset) == bool(args.file):
        raise fail("give either --dataset (with --split) or --file.")
    from hf_clf_ext import jobs
    from hf_clf_ext.labels import LabelSpace, encode_split, name_class_ids
    from hf_clf_ext.texts import build_texts
    from hf_clf_ext.metrics import metrics_from_results

    try:
        dataset = jobs.read_data_file(args.file) if args.file else jobs.load_split(
            args.dataset, args.split, args.dataset_config)
    except (OSError, ValueError) as error:  # a JobError is a ValueError
        raise fail(error) from error
    classifier = _load(args)
    space = LabelSpace(names=tuple(classifier.labels), multi_label=classifier.multi_label)
    try:
        if args.labels:
            dataset = name_class_ids(dataset, args.label_column, args.labels, space, args.split)
        dataset, encoded = encode_split(
            dataset, args.label_column, space, drop_unknown=args.drop_unknown_labels, split=args.split
        )
        texts = build_texts(dataset, args.text_columns, args.text_template, args.split)
    except ValueError as error:
        raise fail(str(error).replace("drop_unknown_labels=True", "--drop_unknown_labels")) from error
    results = classifier.classify(texts, args.method, args.batch_size)
    metrics = metrics_from_results(results, encoded, space.problem_type, space.id2label)
    from hf_clf_ext.batch import without_nan

    print(json.dumps(without_nan({"examples": len(texts), **metrics}), indent=2, allow_nan=False))
    _report_compile(classifier)
    return 0


def prediction_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clf predict", description="One JSON line per text: from arguments, "
                                     "--input (one text per line) or standard input, printed; or a whole file or "
                                     "dataset split into --output_file, streamed, shared out across the processes "
                                     "of an `accelerate launch`, resumable (hf_clf_ext.batch).")
    _model_options(parser)
    parser.add_argument("--input", help="A file with one text per line (blank lines are skipped), printed.")
    parser.add_argument("texts", nargs="*")
    batch = parser.add_argument_group("batch prediction into a file (hf_clf_ext.batch)")
    batch.add_argument("--input_file", help="A .txt (one text per line), .jsonl, .csv or .parquet file, read as a "
                       "stream.")
    batch.add_argument("--dataset", help="Instead of --input_file: a Hub id (streamed), saved folder or "
                       "'bundled:bbc_news'.")
    batch.add_argument("--dataset_config", default=None, help="Configuration name of a Hub dataset.")
    batch.add_argument("--split", default="test", help="The split of --dataset (default: test).")
    batch.add_argument("--text_columns", nargs="+", default=["text"])
    batch.add_argument("--text_template", default=None)
    batch.add_argument("--id_column", default=None, help="A column whose value each output line carries as its id "
                       "(default: the row's 0-based position).")
    batch.add_argument("--output_file", help="The JSON Lines file to write, in input order.")
    batch.add_argument("--chunk_size", type=positive_int, default=1024,
                       help="Texts per part: the unit shared out across processes and redone after a stop.")
    batch.add_argument("--overwrite", action="store_true", help="Replace an existing --output_file.")
    return parser


def predict(argv) -> int:
    """One JSON line per text: from arguments, `--input` (one text per line), or standard input; or a file or dataset
    into `--output_file` (`hf_clf_ext.batch.predict_file`)."""
    parser = prediction_parser()
    args = parser.parse_args(argv)
    if args.input_file or args.dataset or args.output_file:
        return _predict_file(args)
    batch_only = [f"--{name}" for name in ("dataset_config", "split", "text_columns", "text_template", "id_column",
                                           "chunk_size", "overwrite")
                  if getattr(args, name) != parser.get_default(name)]
    if batch_only:
        raise fail(f"{', '.join(batch_only)} apply to rows of --input_file or --dataset written to --output_file; "
                   "texts given as arguments or with --input are classified as they are.")
    if args.texts and args.input:
        raise fail("give texts as arguments or with --input, not both.")
    if args.texts:
        texts = args.texts
    else:
        try:
            stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
            with stream:
                texts = [line.rstrip("\n") for line in stream if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise fail(f"cannot read --input {args.input}: {error}") from error
    if not texts:
        raise fail("no texts to classify (give them as arguments, with --input, or on stdin).")
    from hf_clf_ext.texts import check_texts

    try:
        check_texts(texts)  # before the model loads
    except ValueError as error:
        raise fail(error) from error
    classifier = _load(args)
    from hf_clf_ext.batch import json_line

    for text, result in zip(texts, classifier.classify(texts, args.method, args.batch_size)):
        print(json_line({"text": text, **result}))
    _report_compile(classifier)
    return 0


def _predict_file(args) -> int:
    if args.texts or args.input:
        raise fail("give texts as arguments / --input (printed), or --input_file / --dataset with --output_file, "
                   "not both.")
    if bool(args.input_file) == bool(args.dataset):
        raise fail("give either --input_file or --dataset (with --split), and --output_file.")
    if not args.output_file:
        raise fail("--input_file / --dataset write their predictions to --output_file: name it.")
    from hf_clf_ext.batch import predict_file

    try:
        summary = predict_file(args.model, args.output_file, input_file=args.input_file, dataset=args.dataset,
                               split=args.split, dataset_config=args.dataset_config, text_columns=args.text_columns,
                               text_template=args.text_template, id_column=args.id_column, method=args.method,
                               batch_size=args.batch_size, chunk_size=args.chunk_size, compile=args.compile,
                               overwrite=args.overwrite, **_engine_options(args))
    except (OSError, ValueError) as error:
        raise fail(error) from error
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    from hf_clf_ext.scripts import leave_together

    leave_together()  # the processes of a launch end together, their group torn down
    return 0


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clf export", description="A saved classifier (folder or Hub repo) in "
                                     "the stock architecture: a last-token classifier as the backbone's "
                                     "<Arch>ForSequenceClassification, an instruction classifier as a merged causal "
                                     "LM with its verbalizer.")
    parser.add_argument("--model", required=True, help="A classifier of either approach: a folder or a Hub repo id.")
    parser.add_argument("--output", required=True, help="The folder to write the stock model and tokenizer to.")
    parser.add_argument("--format", choices=("transformers", "onnx"), default="transformers",
                        help="transformers (the stock architecture; the default) or onnx (model.onnx with the "
                             "export's tokenizer, config and a card; a last-token classifier, its stock export or a "
                             "sequence-classification student), which TextClassifier runs on onnxruntime.")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="With --format onnx: onnxruntime's dynamic int8 quantization of the MatMul weights.")
    return parser


def export(argv) -> int:
    args = export_parser().parse_args(argv)
    if os.path.exists(args.output) and (not os.path.isdir(args.output) or os.listdir(args.output)):
        raise fail(f"{args.output} is not empty; choose a new folder.")
    if args.quantize and args.format != "onnx":
        raise fail("--quantize applies to --format onnx.")
    from hf_clf_ext.classifier import saved_approach
    from hf_clf_ext.export import export_instruction, export_onnx, export_stock

    if args.format == "onnx":
        try:
            facts = export_onnx(args.model, args.output, quantize=args.quantize)
        except (OSError, ValueError) as error:
            raise fail(error) from error
        print(json.dumps({"output": args.output, "format": "onnx", "architecture": facts["architecture"],
                          "quantization": facts["quantization"]}))
        return 0
    try:
        approach = saved_approach(args.model)
    except (OSError, ValueError) as error:
        raise fail(error) from error
    if approach == "tfidf":
        raise fail(f"{args.model} is a TF-IDF student: it has no stock transformers architecture, and its folder "
                   "(JSON + safetensors) is already what serves it: load it with TextClassifier.from_pretrained.")
    if approach in ("stock", "onnx"):
        what = ("an ONNX export" if approach == "onnx"
                else "a stock *ForSequenceClassification model already (an export)")
        raise fail(f"{args.model} is {what}: serve it as it is.")
    try:
        architecture = (export_instruction if approach == "instruction" else export_stock)(args.model, args.output)
    except ValueError as error:
        raise fail(error) from error
    print(json.dumps({"output": args.output, "architecture": architecture}))
    return 0


def _report_compile(classifier) -> None:
    """What compiling cost, on stderr, when the job ran compiled."""
    from hf_clf_ext.last_token.compiled import compile_stats

    stats = compile_stats(classifier.model)
    if stats is not None:
        print(stats, file=sys.stderr)


def _load(args):
    """The classifier of `--model` on its `--engine`, with `--method` checked against what it offers before any
    text is classified."""
    from hf_clf_ext.classifier import TextClassifier

    try:
        classifier = TextClassifier.from_pretrained(args.model, compile=args.compile, **_engine_options(args))
        classifier.gives_probabilities(args.method)
    except (OSError, ValueError) as error:
        raise fail(error) from error
    return classifier


def _engine_options(args) -> dict:
    """`--engine`, `--vllm_python` and `--vllm_options` as `TextClassifier.from_pretrained`'s arguments."""
    from hf_clf_ext.engines import check_engine_launch, parse_vllm_options

    try:
        check_engine_launch(args.engine)  # before anything loads
        options = parse_vllm_options(args.vllm_options) or None
    except ValueError as error:
        raise fail(error) from error
    return {"engine": args.engine, "vllm_python": args.vllm_python, "vllm_options": options}


if __name__ == "__main__":
    sys.exit(main())
