"""Batch prediction at scale: a corpus streamed from a file or a dataset, shared out across the processes of an
`accelerate launch`, each writing its own parts, merged in input order; a stopped run resumes.

    hf-clf predict --model outputs/smollm2-bbc --input_file texts.jsonl --output_file predictions.jsonl
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m hf_clf_ext.cli predict \\
        --model outputs/smollm2-bbc --input_file texts.jsonl --output_file predictions.jsonl

    from hf_clf_ext.batch import predict_file
    predict_file("outputs/smollm2-bbc", "predictions.jsonl", input_file="texts.jsonl")

Each output line is `{"id": ..., **result}` in `TextClassifier.classify`'s result format, in input order; `id` is the
`id_column`'s value, else the row's position among the input's texts (0-based). Inputs: `.txt` (one text per line,
blank lines skipped), `.jsonl` (one JSON object per line), `.csv`, `.parquet`, or a dataset split (Hub id, read with
`streaming=True`, a saved folder, `bundled:bbc_news`).

How it scales: the input is read as a stream, twice, and never held (memory stays flat in its size). The first pass
checks every text (an empty or non-text row is an error naming it, before the model loads) and fingerprints them.
The second cuts the rows into chunks of `chunk_size` consecutive rows, chunk k going to process k mod N; each
finished chunk is written at once (atomically) to `<output_file>.parts/part-<k>.jsonl`, so a stopped run, with any
number of processes, resumes at the chunks it had not finished. The parts folder's `header.json` holds the
fingerprints of the model (by content, `hf_clf_ext.fingerprints`), the inputs and the settings: parts of another run
are an error, never merged. When every chunk is done, the main process joins the parts into `output_file` and
removes them. Distillation's teacher labelling (`label_pool`) runs on the same engine, so every process labels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator

from . import texts as _texts
from .texts import check_batch_size, row_text

DEFAULT_CHUNK_SIZE = 1024  # texts per part: sorted by length inside it (tight batches), and what a restart redoes
INPUT_SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
HEADER_FILE = "header.json"
_PART = re.compile(r"part-(\d+)\.jsonl")


def without_nan(value):
    """`value` (nested dicts and lists of numbers) with NaN as None: JSON has no NaN, and a metric can be NaN (ROC-AUC
    where no class has both outcomes, e.g. one row)."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def json_line(record: dict) -> str:
    """One JSON Lines record, unicode kept readable, but U+2028 / U+2029 escaped: JSON allows them raw inside strings,
    and line readers (Python's `str.splitlines`, JavaScript) end a line there. NaN is refused (it is not JSON)."""
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# --- reading: rows as a stream --------------------------------------------------------------------------------------


def stream_rows(input_file: str | None = None, dataset: str | None = None, split: str = "test",
                dataset_config: str | None = None) -> Callable[[], Iterator[dict]]:
    """A function giving a fresh iterator over the input's rows (dicts of column values), read lazily each time; bad
    paths and formats are errors here, before anything is read."""
    if (input_file is None) == (dataset is None):
        raise ValueError("Give either input_file or dataset (with split).")
    if dataset is not None:
        return _dataset_rows(dataset, split, dataset_config)
    suffix = os.path.splitext(input_file)[1].lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"cannot read {input_file}: use a {', '.join(INPUT_SUFFIXES[:-1])} or {INPUT_SUFFIXES[-1]} "
                         "file.")
    if not os.path.isfile(input_file) or not os.access(input_file, os.R_OK):
        raise ValueError(f"cannot read {input_file}: no such readable file.")
    reader = {".txt": _text_lines, ".jsonl": _json_lines, ".csv": _csv_rows, ".parquet": _parquet_rows}[suffix]
    return lambda: reader(input_file)


def _text_lines(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield {"text": line.rstrip("\n")}


def _json_lines(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}, is not valid JSON ({error}): give one JSON object per "
                                 "line.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}, is a JSON {type(row).__name__}, not an object with columns.")
            yield row


def _csv_rows(path: str) -> Iterator[dict]:
    with open(path, encoding="utf-8", newline="") as file:
        yield from csv.DictReader(file)


def _parquet_rows(path: str) -> Iterator[dict]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _dataset_rows(dataset: str, split: str, dataset_config: str | None) -> Callable[[], Iterator[dict]]:
    from .jobs import load_split

    # In memory (bundled: load_split refuses a name that is not bundled) or memory-mapped (a saved folder).
    if dataset.startswith("bundled:") or os.path.isdir(dataset):
        rows = load_split(dataset, split, dataset_config)
        return lambda: iter(rows)
    from datasets import load_dataset

    rows = load_dataset(dataset, dataset_config, split=split, streaming=True)  # an IterableDataset: read as it goes
    return lambda: iter(rows)


def texts_with_ids(rows: Callable[[], Iterator[dict]], text_columns=("text",), text_template: str | None = None,
                   id_column: str | None = None) -> Callable[[], Iterator[tuple[object, str]]]:
    """`(id, normalised text)` per row, from `rows` (as `stream_rows` gives), built as training builds texts."""
    template, fields = _texts.text_template(text_columns, text_template)
    wanted = [*fields, *([id_column] if id_column else [])]

    def pairs():
        for position, row in enumerate(rows()):
            missing = [name for name in wanted if name not in row]
            if missing:
                raise ValueError(f"Row {position} has no column {missing}; its columns are {list(row)}.")
            yield (row[id_column] if id_column else position), row_text({n: row[n] for n in fields}, template,
                                                                        f"Row {position}")

    return pairs


def check_stream(pairs: Iterable[tuple[object, str]]) -> tuple[int, str]:
    """The number of texts and a fingerprint of them and their ids, streamed (nothing is kept); an error names the
    rows that are empty (after normalisation) or whose ids are not JSON values."""
    digest, count, empty = hashlib.sha256(), 0, []
    for count, (key, text) in enumerate(pairs, start=1):
        if not text:
            empty.append(count - 1)
        try:
            encoded = json.dumps(key, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"Row {count - 1} has an id that is not a JSON value: {key!r}.") from None
        digest.update(encoded.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    if empty:
        raise ValueError(f"Rows {empty[:20]} have empty text ({len(empty)} in all): drop or fill them.")
    if not count:
        raise ValueError("The input holds no texts.")
    return count, digest.hexdigest()


# --- the engine: chunks, parts, merge -------------------------------------------------------------------------------


def run_in_parts(pairs: Callable[[], Iterator[tuple[object, str]]], classify_chunk, parts_dir: str, header: dict,
                 output_file: str, *, total: int, chunk_size: int, first_line: str | None = None,
                 progress: bool = True, description: str = "predict", processes: tuple[int, int] | None = None) -> int:
    """Classify `total` `(key, text)` pairs in chunks shared out across processes; `classify_chunk(pairs)` gives one
    JSON line per pair. Every process returns once `output_file` holds all lines in input order (after
    `first_line`, when given). `header` identifies the run: parts written under another are an error. `processes`:
    `(rank, count)` instead of the launch's (`(0, 1)`: this process does everything, whatever the others do).
    Returns how many texts earlier runs had done (all processes')."""
    from tqdm.auto import tqdm

    if processes is None:
        state = process_state()
        rank, world, barrier = state.process_index, state.num_processes, state.wait_for_everyone
    else:
        (rank, world), barrier = processes, lambda: None
    main = rank == 0
    header = {**header, "chunk_size": chunk_size, "texts": total}
    _check_header(parts_dir, header, main)
    barrier()
    done = {int(match[1]) for match in map(_PART.fullmatch, os.listdir(parts_dir)) if match}
    chunks = -(-total // chunk_size)
    mine = [chunk for chunk in range(chunks) if chunk % world == rank]
    size = lambda chunk: min(chunk_size, total - chunk * chunk_size)  # noqa: E731
    bar = tqdm(total=sum(map(size, mine)), initial=sum(size(c) for c in mine if c in done), unit="text",
               desc=description if world == 1 else f"{description} (process {rank} of {world})",
               disable=not progress or not main)
    buffer = []
    for position, pair in enumerate(pairs()):
        chunk = position // chunk_size
        if chunk % world != rank or chunk in done:
            continue
        buffer.append(pair)
        if len(buffer) == size(chunk):
            lines = classify_chunk(buffer)
            _write_atomically(os.path.join(parts_dir, f"part-{chunk:07d}.jsonl"), lines)
            bar.update(len(buffer))
            buffer = []
    bar.close()
    barrier()
    if main:
        _merge(parts_dir, chunks, output_file, first_line)
    barrier()
    return sum(map(size, done))


def check_engine_processes(engine: str, processes: int) -> None:
    """The vLLM engine runs in one process: launched N times, N copies of vLLM would contend for the same devices."""
    if engine == "vllm" and processes > 1:
        raise ValueError(f"engine={engine!r} runs in one process, and this launch has {processes}: run it without "
                         "accelerate launch (vLLM spreads a model over devices itself: tensor_parallel_size in "
                         "vllm_options).")


def engine_facts(classifier) -> dict:
    """What a run's header records of its engine: nothing for torch (as headers written before engines existed), so
    that parts and labels written by one engine are never merged with another's."""
    return {} if classifier.engine_name == "torch" else {"engine": classifier.engine_name}


def process_state():
    """accelerate's view of this process among those launched. Without an accelerator it must be asked for CPU
    workers (`cpu=True`, gloo): otherwise each process of an `accelerate launch` on a CPU machine believes it is alone
    (measured: two processes, each `DistributedType.NO`, each classifying everything)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.accelerator.is_available())


def _check_header(parts_dir: str, header: dict, main: bool) -> None:
    os.makedirs(parts_dir, exist_ok=True)
    path = os.path.join(parts_dir, HEADER_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            try:
                saved = json.load(file)
            except json.JSONDecodeError:
                saved = None
        differs = [key for key in header if key != "model" and (saved or {}).get(key) != header[key]]
        if differs:
            raise ValueError(f"{parts_dir} holds parts of another run (its {', '.join(differs)} differ): remove it "
                             "to start again, or choose another output file.")
    elif main:
        _write_atomically(path, [json.dumps(header)])


def _write_atomically(path: str, lines: Iterable[str]) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as file:
        file.writelines(line + "\n" for line in lines)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _merge(parts_dir: str, chunks: int, output_file: str, first_line: str | None) -> None:
    missing = [k for k in range(chunks) if not os.path.exists(os.path.join(parts_dir, f"part-{k:07d}.jsonl"))]
    if missing:
        raise RuntimeError(f"{parts_dir} lacks parts {missing[:10]} after every process finished: rerun to resume.")
    temporary = f"{output_file}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as out:
        if first_line is not None:
            out.write(first_line + "\n")
        for chunk in range(chunks):
            with open(os.path.join(parts_dir, f"part-{chunk:07d}.jsonl"), encoding="utf-8") as part:
                shutil.copyfileobj(part, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, output_file)
    shutil.rmtree(parts_dir)


# --- prediction -----------------------------------------------------------------------------------------------------


def predict_file(model, output_file: str | os.PathLike, *, input_file: str | None = None,
                 dataset: str | None = None, split: str = "test", dataset_config: str | None = None,
                 text_columns=("text",), text_template: str | None = None, id_column: str | None = None,
                 method: str | None = None, batch_size: int = 16, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 compile: bool | None = None, overwrite: bool = False, progress: bool = True,
                 engine: str | None = None, vllm_python: str | None = None, vllm_options: dict | None = None) -> dict:
    """Classify every text of `input_file` (or `dataset`'s `split`) into `output_file` (see the module docstring),
    in this process or across those of an `accelerate launch`; returns `{"output_file", "texts", "model", "engine",
    "processes", "resumed", "seconds", "texts_per_second"}`: `resumed` texts were done by an earlier run, `seconds`
    run from the model loaded to the output merged, `texts_per_second` counts the texts this run classified.
    `model`: a folder or Hub repo id of either approach, or a loaded `TextClassifier`. `engine`, `vllm_python`,
    `vllm_options`: as `TextClassifier.from_pretrained`'s; the vLLM engine runs in one process (vLLM spreads a model
    over devices itself: `tensor_parallel_size` in `vllm_options`), and a run resumes only with the engine it began
    with."""
    from .classifier import TextClassifier
    from .fingerprints import classifier_fingerprint

    output_file = str(output_file)
    check_batch_size(batch_size)
    check_batch_size(chunk_size)
    if os.path.exists(output_file) and not overwrite:
        raise ValueError(f"{output_file} exists (a finished run's output?): remove it, choose another output file, "
                         "or overwrite it.")
    pairs = texts_with_ids(stream_rows(input_file, dataset, split, dataset_config), text_columns, text_template,
                           id_column)
    total, texts_fingerprint = check_stream(pairs())  # before the model loads
    state = process_state()
    if isinstance(model, TextClassifier):
        classifier = model
    else:
        from .classifier import saved_approach

        check_engine_processes(engine or "torch", state.num_processes)
        # Each process's own accelerator, for a model torch loads here (not an ONNX export: onnxruntime loads it).
        in_torch = engine in (None, "torch") and saved_approach(str(model)) != "onnx"
        device = {"device_map": {"": str(state.device)}} if in_torch and state.device.type != "cpu" else {}
        classifier = TextClassifier.from_pretrained(model, compile=compile, engine=engine, vllm_python=vllm_python,
                                                    vllm_options=vllm_options, **device)
    check_engine_processes(classifier.engine_name, state.num_processes)
    classifier.gives_probabilities(method)  # an unknown method is an error before any text runs
    method = method or classifier.methods[0]
    header = {"model": classifier.name_or_path, "model_fingerprint": classifier_fingerprint(classifier),
              "method": method, "labels": list(classifier.labels), "fingerprint": texts_fingerprint,
              **engine_facts(classifier)}

    def classify_chunk(chunk):
        results = classifier.classify([text for _, text in chunk], method, batch_size)
        return [json_line({"id": key, **result}) for (key, _), result in zip(chunk, results)]

    started = time.perf_counter()
    resumed = run_in_parts(pairs, classify_chunk, f"{output_file}.parts", header, output_file, total=total,
                 chunk_size=chunk_size, progress=progress)
    seconds = time.perf_counter() - started
    return {"output_file": output_file, "texts": total, "model": classifier.name_or_path,
            "engine": classifier.engine_name, "processes":
            state.num_processes, "resumed": resumed, "seconds": round(seconds, 3),
            "texts_per_second": round((total - resumed) / seconds, 2)}

