"""`hf-clf`: train, evaluate and predict from the command line, over the same YAML configs as the recipes.

    hf-clf train --approach last_token --config recipes/configs/smollm2_135m_bbc_last_token.yaml [--key value ...]
    hf-clf evaluate --model outputs/smollm2-bbc --dataset bundled:bbc_news --split test
    hf-clf predict --model outputs/smollm2-bbc "Shares rose after the results." < more_texts.txt
    hf-clf export --model outputs/smollm2-bbc --output outputs/smollm2-bbc-stock    # stock architecture, for vLLM
    hf-clf distill --config recipes/configs/distill_smollm2_bbc_tfidf.yaml   # teacher labels a pool -> student
"""

import argparse
import json
import os
import sys

APPROACHES = ("last_token", "instruction")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train(rest)
    if command == "evaluate":
        return evaluate(rest)
    if command == "predict":
        return predict(rest)
    if command == "export":
        return export(rest)
    if command == "distill":
        return distill(rest)
    print(f"hf-clf: unknown command {command!r}; use train, evaluate, predict, export or distill.", file=sys.stderr)
    return 2


def train(argv) -> int:
    from . import jobs

    parser = argparse.ArgumentParser(prog="hf-clf train", add_help=False)
    parser.add_argument("--approach", choices=APPROACHES, default="last_token")
    known, rest = parser.parse_known_args(argv)
    if known.approach == "last_token":
        from .last_token_config import LastTokenClassifierTrainingArguments as arguments

        run = jobs.train_last_token
    else:
        from .instruction_config import InstructionSFTConfig as arguments

        run = jobs.train_instruction
    script_args, training_args, splits = jobs.prepare(arguments, rest)
    results = run(script_args, training_args, splits)
    if training_args.process_index == 0:
        jobs.print_results(results, training_args.output_dir, known.approach)
    return 0


def distill(argv) -> int:
    """A trained classifier labels an unlabelled pool; a student (decoder, any sequence classifier, TF-IDF) learns it."""
    from . import jobs

    script_args, args, splits, pool_texts = jobs.prepare_distillation(argv)
    results = jobs.distill(script_args, args, splits, pool_texts)
    if args.process_index == 0:
        jobs.print_results(results, args.output_dir, "tfidf" if args.student_type == "tfidf" else "last_token")
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="A classifier of either approach: a folder or a Hub repo id.")
    parser.add_argument("--dataset", help="Hub id, saved folder or 'bundled:bbc_news'.")
    parser.add_argument("--file", help="A CSV / JSON(L) / Parquet file.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--text_columns", nargs="+", default=["text"])
    parser.add_argument("--text_template", default=None)
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--method", choices=("generate", "score"), default=None,
                        help="Instruction models: constrained decoding (the default) or label scoring.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--drop_unknown_labels", action="store_true",
                        help="Drop rows whose labels the model does not know (and report how many).")
    _compile_option(parser)


def evaluate(argv) -> int:
    """Metrics of a saved model on a labelled split, as JSON."""
    from . import jobs
    from .data import LabelSpace, build_texts, encode_split
    from .metrics import metrics_from_results

    parser = argparse.ArgumentParser(prog="hf-clf evaluate")
    _data_arguments(parser)
    args = parser.parse_args(argv)
    script = jobs.ScriptArguments(model_name_or_path=args.model, dataset=args.dataset, test_file=args.file,
                                  train_file=args.file, test_split=args.split, train_split=args.split)
    if not args.dataset and not args.file:
        raise SystemExit("hf-clf: give --dataset or --file.")
    splits = jobs.load_splits(script)
    dataset = splits[args.split] if args.split in splits else splits["test"] if "test" in splits else splits["train"]
    classifier = _load(args.model, args.method, args.compile)
    space = LabelSpace(names=tuple(classifier.labels), multi_label=classifier.multi_label)
    try:
        dataset, encoded = encode_split(
            dataset, args.label_column, space, drop_unknown=args.drop_unknown_labels, split=args.split
        )
        texts = build_texts(dataset, args.text_columns, args.text_template, args.split)
    except ValueError as error:
        raise SystemExit(f"hf-clf: {error}".replace("drop_unknown_labels=True", "--drop_unknown_labels")) from error
    results = classifier.classify(texts, args.method, args.batch_size)
    metrics = metrics_from_results(results, encoded, space.problem_type, space.id2label)
    print(json.dumps({"examples": len(texts), **metrics}, indent=2))
    _report_compile(classifier)
    return 0


def predict(argv) -> int:
    """One JSON line per text: from arguments, `--input` (one text per line), or standard input."""
    parser = argparse.ArgumentParser(prog="hf-clf predict")
    parser.add_argument("--model", required=True, help="A classifier of either approach: a folder or a Hub repo id.")
    parser.add_argument("--input", help="A file with one text per line.")
    parser.add_argument("--method", choices=("generate", "score"), default=None,
                        help="Instruction models: constrained decoding (the default) or label scoring.")
    parser.add_argument("--batch_size", type=int, default=16)
    _compile_option(parser)
    parser.add_argument("texts", nargs="*")
    args = parser.parse_args(argv)
    if args.texts:
        texts = args.texts
    else:
        stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
        with stream:
            texts = [line.rstrip("\n") for line in stream if line.strip()]
    if not texts:
        raise SystemExit("hf-clf: no texts to classify (give them as arguments, with --input, or on stdin).")
    classifier = _load(args.model, args.method, args.compile)
    for text, result in zip(texts, classifier.classify(texts, args.method, args.batch_size)):
        print(json.dumps({"text": text, **result}, ensure_ascii=False))
    _report_compile(classifier)
    return 0


def export(argv) -> int:
    """A saved classifier (folder or Hub repo) in the stock architecture: a last-token classifier as the backbone's
    `<Arch>ForSequenceClassification`, an instruction classifier as a merged causal LM with its verbalizer."""
    parser = argparse.ArgumentParser(prog="hf-clf export")
    parser.add_argument("--model", required=True, help="A classifier of either approach: a folder or a Hub repo id.")
    parser.add_argument("--output", required=True, help="The folder to write the stock model and tokenizer to.")
    args = parser.parse_args(argv)
    if os.path.isdir(args.output) and os.listdir(args.output):
        raise SystemExit(f"hf-clf: {args.output} is not empty; choose a new folder.")
    from transformers.utils import cached_file

    from .export import export_instruction, export_stock
    from .instruction import PROMPT_FILE

    instruction = cached_file(args.model, PROMPT_FILE, _raise_exceptions_for_missing_entries=False) is not None
    try:
        architecture = (export_instruction if instruction else export_stock)(args.model, args.output)
    except ValueError as error:
        raise SystemExit(f"hf-clf: {error}") from error
    print(json.dumps({"output": args.output, "architecture": architecture}))
    return 0


def _compile_option(parser) -> None:
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="Run a last-token classifier through torch.compile (bucketed shapes); by default only "
                             "long jobs on hardware where it pays are compiled (see hf_clf_ext.compiled).")


def _report_compile(classifier) -> None:
    """What compiling cost, on stderr, when the job ran compiled."""
    from .compiled import compile_stats

    stats = compile_stats(classifier.model)
    if stats is not None:
        print(stats, file=sys.stderr)


def _load(model: str, method: str | None, compile: bool | None = None):
    """The classifier, with `method` checked against what it offers before any text is classified."""
    from .classifier import TextClassifier

    try:
        classifier = TextClassifier.from_pretrained(model, compile=compile)
        classifier.gives_probabilities(method)
    except (OSError, ValueError) as error:
        raise SystemExit(f"hf-clf: {error}") from error
    return classifier


if __name__ == "__main__":
    sys.exit(main())
