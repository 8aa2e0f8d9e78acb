"""What the test files share: synthetic data, the trainers' test arguments and builders, recipe loading and configs, a
second (WordPiece) tokenizer and the brute-force definition of label scoring. Fixtures
live in conftest.py; the tiny models and tokenizers are built there."""

import functools
import importlib.util
import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_clf_ext import InstructionConfig, InstructionTrainer, LastTokenConfig, LastTokenTrainer

from conftest import _corpus

ROOT = Path(__file__).resolve().parents[1]


NO_SUCH_MODEL = "does-not-exist/no-such-model"  # any attempt to load it would fail: errors must come first


KEYWORDS = {"business": "market", "sport": "striker", "entertainment": "film"}


FILLER = "the of and in after while as for its new over despite weak growth season holiday well".split()


def synthetic(n: int, seed: int, multi_label: bool = False) -> Dataset:
    """Texts of filler words with planted topic keywords; the label is which keywords occur."""
    rng = random.Random(seed)
    texts, labels = [], []
    names = list(KEYWORDS)
    for i in range(n):
        present = [n_ for n_ in names if rng.random() < 0.4] if multi_label else [names[i % len(names)]]
        if multi_label and not present:
            present = [rng.choice(names)]
        words = rng.choices(FILLER, k=rng.randint(4, 12))
        for name in present:
            words.insert(rng.randrange(len(words) + 1), KEYWORDS[name])
        texts.append(" ".join(words))
        labels.append(sorted(present) if multi_label else present[0])
    return Dataset.from_dict({"text": texts, "label": labels})


def arguments(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=4,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        per_device_eval_batch_size=16,
        learning_rate=3e-3,
        head_learning_rate=1e-2,
        optim="adamw_torch",
        max_length=64,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        logging_steps=5,
        report_to="none",
        seed=0,
        use_cpu=True,
    )
    defaults.update(overrides)
    return LastTokenConfig(**defaults)


def copy_naming_tokenizer_class(source, target, tokenizer_class: str) -> Path:
    """A copy of the model folder `source` at `target` whose tokenizer_config names `tokenizer_class`, as a Hub repo
    naming a model's own class does (SmolLM2's and GPT-2's: GPT2Tokenizer)."""
    target = Path(target)
    shutil.copytree(source, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    return target


def make_trainer(llama_dir, tokenizer, tmp_path, train=None, evaluation=None, **overrides):
    return LastTokenTrainer(
        model=str(llama_dir),
        args=arguments(tmp_path, **overrides),
        train_dataset=train if train is not None else synthetic(96, seed=1),
        eval_dataset=evaluation if evaluation is not None else synthetic(48, seed=2),
        processing_class=tokenizer,
    )


def instruction_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
        per_device_eval_batch_size=16, optim="adamw_torch", max_length=256, report_to="none", use_cpu=True,
        eval_strategy="no", logging_steps=4, disable_tqdm=True, seed=0,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    defaults.update(overrides)
    return InstructionConfig(**defaults)


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_config(tmp_path, model, data_files, approach="last_token", **overrides) -> Path:
    config = {
        "model_name_or_path": str(model),
        "train_file": str(data_files["train"]),
        "validation_file": str(data_files["validation"]),
        "test_file": str(data_files["test"]),
        "output_dir": str(tmp_path / f"out_{approach}"),
        "num_train_epochs": 2,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3.0e-3,
        "optim": "adamw_torch",
        "max_length": 64 if approach == "last_token" else 256,
        "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }
    if approach == "last_token":
        config["head_learning_rate"] = 1.0e-2
    else:
        config.update(eval_strategy="no", prompt_template="Text: {text}", use_peft=False)
    config.update(overrides)
    path = tmp_path / f"{approach}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CONTEXT = "Text: good film\nLabel:"


SHARED_PREFIX = ["pos", "positive", "positive-ish", "négatif"]


ALPHABET = "abpos é日🙂-;"


@functools.lru_cache(maxsize=None)
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A second, very different tokenizer: BERT-style normalization (drops control and format characters),
    whitespace/punctuation pre-tokenization and WordPiece with `##` continuations. Its decode does not round-trip
    ("日本" -> "日 本"), so tests compare its token ids, not its text."""
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(
        lowercase=False, strip_accents=False, clean_text=True, handle_chinese_chars=True
    )
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.decoder = decoders.WordPiece()
    extra = ("Text: good film\nLabel: positive pos positive-ish négatif 日本 🙂 very good not bad at all ab ba é日 "
             "a-b ; , |")
    words = [extra, *(c * n for c in ALPHABET for n in (1, 2, 3)), *(a + b for a in ALPHABET for b in ALPHABET)]
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[EOS]"])
    raw.train_from_iterator(_corpus() + words * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]")


def label_sets(verbalizer):
    """Every answer a verbalizer allows, as sorted label-id lists."""
    n = len(verbalizer.labels)
    if not verbalizer.multi_label:
        return [[i] for i in range(n)]
    most = verbalizer.max_labels or n
    return [list(c) for k in range(1, min(most, n) + 1) for c in itertools.combinations(range(n), k)]


def instruction_trainer(llama_dir, tokenizer, tmp_path, train=None, evaluation=None, **overrides):
    return InstructionTrainer(
        str(llama_dir), args=instruction_config(tmp_path, **overrides),
        train_dataset=train if train is not None else synthetic(96, seed=1),
        eval_dataset=evaluation if evaluation is not None else synthetic(30, seed=2),
        processing_class=tokenizer,
    )


def brute_force_scores(model, prompt, tokens):
    """The definition of `score_labels`, with a full forward pass for every sequence (no cache, no batching)."""
    def logp(answer, seq):
        ids = torch.tensor([list(prompt) + answer + seq])
        with torch.no_grad():
            logprobs = model(ids).logits[0].float().log_softmax(-1)
        start = len(prompt) + len(answer)
        return sum(logprobs[start + k - 1, token].item() for k, token in enumerate(seq))

    n = len(tokens.first)
    if not tokens.multi_label:
        labels = [list(ids) for ids in tokens.first]
        scores = []
        for ids in labels:
            score = logp([], ids)
            if any(len(other) > len(ids) and other[: len(ids)] == ids for other in labels):  # `pos` of `positive`
                score = np.logaddexp.reduce([score + logp(ids, [stop]) for stop in set(tokens.stop)])
            scores.append(score)
        return torch.tensor(scores).softmax(-1).numpy()
    scores, chosen, answer = np.zeros(n), [], []
    while True:
        candidates = [i for i in range(n) if not chosen or i > chosen[-1]]
        lead = list(tokens.delimiter) if chosen else []
        pieces = tokens.after_delimiter if chosen else tokens.first
        stops, more = sorted(set(tokens.stop)), len(chosen) + 1 < (tokens.max_labels or n)
        # A label is named when what decoding allows after it follows: a stop token, or the delimiter before another.
        options = [np.logaddexp.reduce([logp(answer, lead + list(pieces[i]) + [end]) for end in
                                        ([tokens.delimiter[0]] if more and i < n - 1 else []) + stops])
                   for i in candidates]
        if chosen:  # stopping is allowed once a label is named
            options.append(np.logaddexp.reduce([logp(answer, [stop]) for stop in stops]))
        shares = torch.tensor(options).softmax(-1).numpy()
        scores[candidates] = shares[: len(candidates)]
        best = int(np.argmax(shares))
        if best == len(candidates):
            return scores
        chosen.append(candidates[best])
        if chosen[-1] == n - 1 or len(chosen) == (tokens.max_labels or n):
            return scores
        answer += lead + list(pieces[chosen[-1]])
