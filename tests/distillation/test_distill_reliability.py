"""Reliability of distillation: two-class TF-IDF students, teachers known by their content, students' tokenizers
cutting and stripping texts as training did, normalised pools, and numbers, files and folders that must be refused.

Everything is tiny and fast: TF-IDF teachers (a `TextClassifier` like any other), a 2-layer BERT and a 2-layer Llama
from conftest's tokenizer."""

import hashlib
import json
import os
import math
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

from hf_clf_ext import TextClassifier
from hf_clf_ext.labels import LabelSpace
from hf_clf_ext.distillation.config import DistillationConfig
from hf_clf_ext.distillation.trainer import (
    _last_token_student,
    distillation_loss,
    fit_tfidf_student,
    hard_labels,
    soften,
    stock_student,
    train_stock_student,
)
from hf_clf_ext.last_token.adapters import unwrap_classifier
from hf_clf_ext.distillation.teacher_labels import check_pool_texts, label_pool
from hf_clf_ext.fingerprints import classifier_fingerprint as teacher_fingerprint
from hf_clf_ext.fingerprints import fingerprint, folder_fingerprint
from hf_clf_ext.distillation.tfidf import SETTINGS_FILE, WEIGHTS_FILE, TfidfClassifier

from testing_utils import copy_naming_tokenizer_class, recipe

NAMES = ["business", "sport"]
KEYWORDS = {"business": "market", "sport": "striker"}
FILLER = "the of and in after while as for its new over despite weak growth season holiday well".split()
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def two_class(n: int, seed: int, multi_label: bool = False) -> tuple[list[str], list]:
    """Filler texts with planted keywords: one of two (single-label) or any non-empty subset (multi-label)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        present = [name for name in NAMES if rng.random() < 0.5] or [NAMES[i % 2]] if multi_label else [NAMES[i % 2]]
        words = rng.choices(FILLER, k=rng.randint(4, 10))
        for name in present:
            words.insert(rng.randrange(len(words) + 1), KEYWORDS[name])
        texts.append(" ".join(words))
        labels.append(sorted(present) if multi_label else present[0])
    return texts, labels


def onehot(labels) -> np.ndarray:
    return np.eye(2)[[NAMES.index(label) for label in labels]]


@pytest.fixture(scope="module")
def data():
    return {split: two_class(n, seed) for split, (n, seed) in
            {"train": (40, 1), "validation": (16, 2), "test": (20, 3), "pool": (60, 4)}.items()}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data):
    """A two-class TF-IDF teacher saved in a folder."""
    texts, labels = data["train"]
    path = tmp_path_factory.mktemp("tfidf_teacher") / "teacher"
    TfidfClassifier.fit(texts, onehot(labels), NAMES, multi_label=False).save_pretrained(path)
    return path


def retrain(folder, data, flip: bool):
    """Replace the classifier in `folder` by one fitted on the same texts (labels swapped when `flip`)."""
    texts, labels = data["train"]
    shutil.rmtree(folder)
    targets = onehot(labels)[:, ::-1] if flip else onehot(labels)
    TfidfClassifier.fit(texts, targets, NAMES, multi_label=False).save_pretrained(folder)


# --- 1. two classes --------------------------------------------------------------------------------------------------


def test_a_two_class_tfidf_classifier_is_sklearns_binary_model(tmp_path, data):
    texts, labels = data["train"]
    y = np.array([NAMES.index(label) for label in labels])
    model = TfidfClassifier.fit(texts, np.eye(2)[y], NAMES, multi_label=False, C=10.0)
    features = model.vectorizer.transform(texts)
    reference = LogisticRegression(C=10.0, max_iter=5000, random_state=0).fit(features, y)
    assert model.coef.shape == (2, features.shape[1]) and model.intercept.shape == (2,)
    probabilities = model.predict_proba(texts)
    np.testing.assert_allclose(probabilities, reference.predict_proba(features), atol=1e-9)
    assert model.num_parameters == features.shape[1] + 1  # the first class's zero row is no parameter

    results = model.classify(texts)
    assert all(set(result["probabilities"]) == set(NAMES) for result in results)
    assert [result["label"] for result in results] == labels  # not the first label for everything
    assert all(result["score"] < 1.0 for result in results)

    model.temperature = 0.5
    model.save_pretrained(tmp_path / "student")
    for loaded in (TfidfClassifier.from_pretrained(tmp_path / "student"),
                   TextClassifier.from_pretrained(tmp_path / "student").model):
        np.testing.assert_allclose(loaded.predict_proba(texts), model.predict_proba(texts), atol=1e-12)
    via_loader = TextClassifier.from_pretrained(tmp_path / "student").classify(texts)
    assert [result["label"] for result in via_loader] == labels

    # A folder saved with scikit-learn's single row (as this package used to save it) loads as the same model.
    weights = load_file(str(tmp_path / "student" / WEIGHTS_FILE))
    save_file({**weights, "coef": np.ascontiguousarray(weights["coef"][1:]), "intercept": weights["intercept"][1:]},
              str(tmp_path / "student" / WEIGHTS_FILE))
    old = TfidfClassifier.from_pretrained(tmp_path / "student")
    np.testing.assert_allclose(old.predict_proba(texts), model.predict_proba(texts), atol=1e-12)


def test_a_two_label_multi_label_tfidf_classifier_fits_each_label(tmp_path):
    texts, labels = two_class(40, seed=7, multi_label=True)
    targets = np.array([[name in row for name in NAMES] for row in labels], dtype=float)
    model = TfidfClassifier.fit(texts, targets, NAMES, multi_label=True)
    assert model.coef.shape[0] == 2 and model.intercept.shape == (2,)
    probabilities = model.predict_proba(texts)
    features = model.vectorizer.transform(texts)
    for j in range(2):  # each label: the binary model of its hard targets (the 1e-12 weights aside)
        reference = LogisticRegression(C=10.0, max_iter=5000, random_state=0).fit(features, targets[:, j])
        np.testing.assert_allclose(probabilities[:, j], reference.predict_proba(features)[:, 1], atol=1e-4)
    model.decision_thresholds = [0.4, 0.6]
    model.save_pretrained(tmp_path / "multi")
    loaded = TextClassifier.from_pretrained(tmp_path / "multi")
    assert loaded.multi_label and loaded.labels == NAMES
    np.testing.assert_allclose(loaded.model.predict_proba(texts), probabilities, atol=1e-12)
    assert [sorted(result["labels"]) for result in loaded.classify(texts)] == [
        [name for name, p, t in zip(NAMES, row, [0.4, 0.6]) if p >= t] for row in probabilities]


def test_a_two_class_tfidf_student_calibrates_on_validation(data):
    texts, labels = data["train"]
    val_texts, val_labels = data["validation"]
    args = SimpleNamespace(tfidf_ngram_max=2, tfidf_sublinear_tf=True, tfidf_min_df=1, tfidf_C=10.0, seed=0,
                           distill_temperature=2.0, calibrate=True, per_class_thresholds=False)
    space = LabelSpace(names=tuple(NAMES), multi_label=False)
    soft = soften(np.clip(onehot(labels), 0.05, 0.95), 2.0, multi_label=False)
    student = fit_tfidf_student(args, space, texts, soft, (val_texts, [NAMES.index(label) for label in val_labels]))
    assert math.isfinite(student.temperature) and student.temperature > 0
    probabilities = student.predict_proba(val_texts)
    assert probabilities.shape == (len(val_texts), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert NAMES[0] in [result["label"] for result in student.classify(val_texts)] and \
        NAMES[1] in [result["label"] for result in student.classify(val_texts)]


def test_soften_and_hard_labels_with_two_classes_and_one_label():
    p = np.array([[0.8, 0.2], [0.3, 0.7]])
    soft = soften(p, 2.0, multi_label=False)
    logit = np.log(p[:, 1] / p[:, 0]) / 2.0  # two classes: a sigmoid of the halved log-odds
    np.testing.assert_allclose(soft[:, 1], 1 / (1 + np.exp(-logit)))
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert hard_labels(p, NAMES, multi_label=False) == ["business", "sport"]
    one = np.array([[0.9], [0.2]])
    np.testing.assert_allclose(soften(one, 1.0, multi_label=True), one)
    assert hard_labels(one, ["spam"], multi_label=True) == [["spam"], []]
    assert hard_labels(one, ["spam"], multi_label=True, thresholds=[0.1]) == [["spam"], ["spam"]]


def write_files(folder, data) -> dict:
    files = {}
    for split, (texts, labels) in data.items():
        files[split] = folder / f"{split}.jsonl"
        rows = [{"text": text} if split == "pool" else {"text": text, "label": label} for text, label in
                zip(texts, labels)]
        files[split].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return files


def distill_yaml(tmp_path, teacher, files, output, **overrides):
    config = {"teacher": str(teacher), "student_type": "tfidf", "train_file": str(files["train"]),
              "validation_file": str(files["validation"]), "test_file": str(files["test"]),
              "pool_file": str(files["pool"]), "output_dir": str(output),
              "teacher_labels_file": str(tmp_path / "teacher_labels.jsonl"), "use_cpu": True, "report_to": "none",
              "disable_tqdm": True, "seed": 0, **overrides}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_two_class_distillation_runs_with_validation_and_test(tmp_path, data, teacher_dir):
    files = write_files(tmp_path, data)
    results = recipe("distill").main(["--config", str(distill_yaml(tmp_path, teacher_dir, files, tmp_path / "out"))])
    assert results["test_agreement"] >= 0.9 and results["test_f1_macro"] >= 0.9, results
    assert "eval_f1_macro" in results
    student = TextClassifier.from_pretrained(tmp_path / "out")
    predicted = student.classify(data["test"][0])
    assert all(set(result["probabilities"]) == set(NAMES) for result in predicted)
    assert {result["label"] for result in predicted} == set(NAMES)


# --- 2. teachers known by their content ------------------------------------------------------------------------------


def test_a_teacher_retrained_into_the_same_folder_does_not_reuse_the_labels(tmp_path, data):
    folder = tmp_path / "teacher"
    folder.mkdir()
    retrain(folder, data, flip=False)
    pool = data["pool"][0]
    path = tmp_path / "labels.jsonl"
    first = label_pool(TextClassifier.from_pretrained(folder), pool, path, progress=False)
    retrain(folder, data, flip=True)  # same folder, same labels, other weights
    teacher = TextClassifier.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"other teacher \(its files or weights\)"):
        label_pool(teacher, pool, path, progress=False)
    path.unlink()
    second = label_pool(teacher, pool, path, progress=False)
    assert (first.argmax(axis=1) != second.argmax(axis=1)).all()


def test_the_same_teacher_in_another_folder_reuses_its_labels(tmp_path, data, teacher_dir):
    pool = data["pool"][0]
    path = tmp_path / "labels.jsonl"
    first = label_pool(TextClassifier.from_pretrained(teacher_dir), pool, path, progress=False)
    shutil.copytree(teacher_dir, tmp_path / "copy")
    (tmp_path / "copy" / "README.md").write_text("a card rewritten later")  # not part of the model
    copy = TextClassifier.from_pretrained(tmp_path / "copy")
    calls = []
    classify = copy.classify
    copy.classify = lambda batch, **kwargs: (calls.append(len(batch)), classify(batch, **kwargs))[1]
    np.testing.assert_array_equal(label_pool(copy, pool, path, progress=False), first)
    assert not calls


def test_the_fingerprint_covers_the_files_that_define_a_model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * (3 << 20),
             "tokenizer.json": b"{}", "tokenizer_config.json": b"{}", "merges.txt": b"a b",
             "modeling_last_token.py": b"# code"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    base = folder_fingerprint(folder)
    # Run records, cards, labels files and checkpoints are not the model.
    (folder / "README.md").write_text("card")
    (folder / "all_results.json").write_text("{}")
    (folder / "eval_results.json").write_text("{}")
    (folder / "teacher_labels.jsonl").write_text("{}\n")
    (folder / "training_args.bin").write_bytes(b"args")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "model.safetensors").write_bytes(b"other")
    assert folder_fingerprint(folder) == base
    for name, change in (("model.safetensors", b"\0" * ((3 << 20) - 1) + b"\1"), ("config.json", b"{}"),
                         ("tokenizer.json", b'{"a": 1}'), ("merges.txt", b"a c"), ("modeling_last_token.py", b"#")):
        (folder / name).write_bytes(change)
        assert folder_fingerprint(folder) != base, name
        (folder / name).write_bytes(files[name])
    assert folder_fingerprint(folder) == base
    for name in ("adapter_model.safetensors", "adapter_config.json", "instruction_prompt.json", "verbalizer.json",
                 SETTINGS_FILE, WEIGHTS_FILE, "model-00002-of-00002.safetensors", "chat_template.jinja"):
        (folder / name).write_bytes(b"x")
        assert folder_fingerprint(folder) != base, name
        (folder / name).unlink()
    # A last-token save over a Hub backbone keeps its adapter in a subfolder: a retrained adapter is another teacher.
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"lora A")
    with_adapter = folder_fingerprint(folder)
    assert with_adapter != base
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"lora B")
    assert folder_fingerprint(folder) != with_adapter
    (folder / "config.json").write_text('{"model_type": "llama", "adapter_subfolder": "lora"}')
    (folder / "lora").mkdir()
    (folder / "lora" / "adapter_model.safetensors").write_bytes(b"lora A")
    named = folder_fingerprint(folder)
    (folder / "lora" / "adapter_model.safetensors").write_bytes(b"lora C")
    changed = folder_fingerprint(folder)
    assert changed != named
    (folder / "student_tfidf").mkdir()  # a student distilled into a subfolder is not its teacher
    (folder / "student_tfidf" / SETTINGS_FILE).write_text("{}")
    assert folder_fingerprint(folder) == changed


def test_a_hub_teacher_is_known_by_its_snapshot_commit(tmp_path, monkeypatch, teacher_dir):
    from huggingface_hub import constants

    commit = hashlib.sha1(b"some commit").hexdigest()
    root = tmp_path / "hub" / "models--org--tfidf-teacher"
    shutil.copytree(teacher_dir, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    teacher = TextClassifier.from_pretrained("org/tfidf-teacher")
    assert teacher_fingerprint(teacher) == f"hub:org/tfidf-teacher@{commit}"


def test_a_teacher_built_in_python_is_known_by_its_weights(data):
    texts, labels = data["train"]
    a = TfidfClassifier.fit(texts, onehot(labels), NAMES, multi_label=False)
    b = TfidfClassifier.fit(texts, onehot(labels)[:, ::-1], NAMES, multi_label=False)

    def wrap(model):
        return TextClassifier("tfidf", model.labels, model.multi_label, None, model=model)

    assert teacher_fingerprint(wrap(a)).startswith("weights:")
    assert teacher_fingerprint(wrap(a)) == teacher_fingerprint(wrap(a))
    assert teacher_fingerprint(wrap(a)) != teacher_fingerprint(wrap(b))


# --- 3. students' tokenizers cut and strip as training did -----------------------------------------------------------


def long_text(tokens: int, tokenizer) -> str:
    """A text of at least `tokens` tokens: business in its first 16 tokens, sport after them."""
    rng = random.Random(0)
    words = ["the", "market", "rose", "after", "the", "bank", "cut", "rates"]
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words.append(rng.choice(["striker", "striker", *FILLER]))
    return " ".join(words)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, tokenizer_dirs):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                                   pad_token_id=tokenizer.pad_token_id))
    path = tmp_path_factory.mktemp("bert")
    encoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def student_args(output_dir, **overrides) -> DistillationConfig:
    options = dict(teacher="unused-teacher", output_dir=str(output_dir), max_length=16, num_train_epochs=10,
                   per_device_train_batch_size=8, learning_rate=1e-2, optim="adamw_torch", use_cpu=True,
                   report_to="none", disable_tqdm=True, eval_strategy="no", save_strategy="no", seed=0,
                   lora_target_modules=LORA_TARGETS)
    options.update(overrides)
    return DistillationConfig(**options)


def train_encoder_student(encoder_dir, output_dir, data, long, **overrides):
    texts, labels = data["train"]
    texts = [*texts, long]
    labels = [*labels, "business"]
    space = LabelSpace(names=tuple(NAMES), multi_label=False)
    args = student_args(output_dir, **{"gradient_accumulation_steps": 1, **overrides})
    model, tokenizer = stock_student(str(encoder_dir), space)
    soft = soften(np.clip(onehot(labels), 0.1, 0.9), args.distill_temperature, multi_label=False)
    trainer = train_stock_student(args, space, model, tokenizer, texts, [NAMES.index(label) for label in labels],
                                  soft, np.zeros(len(texts), bool))
    trainer.save_model(args.output_dir)
    return trainer


@pytest.fixture(scope="module")
def encoder_student(tmp_path_factory, encoder_dir, data, tokenizer_dirs):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    long = long_text(418, tokenizer)
    output = tmp_path_factory.mktemp("encoder_student")
    trainer = train_encoder_student(encoder_dir, output, data, long)
    return {"trainer": trainer, "path": output, "long": long, "tokenizer": tokenizer}


def test_a_sequence_classification_student_cuts_texts_where_it_was_trained(encoder_student):
    path, long, raw = encoder_student["path"], encoder_student["long"], encoder_student["tokenizer"]
    ids = raw(long)["input_ids"]
    assert len(ids) >= 418
    model = encoder_student["trainer"].model.eval()
    with torch.no_grad():
        cut = model(input_ids=torch.tensor([ids[:16]])).logits.softmax(-1)[0]
        whole = model(input_ids=torch.tensor([ids])).logits.softmax(-1)[0]
    assert cut[0] > 0.5 and (cut - whole).abs().max() > 0.05, (cut, whole)  # its tail would change the answer
    loaded = TextClassifier.from_pretrained(path)
    result = loaded.classify([long])[0]
    np.testing.assert_allclose([result["probabilities"][name] for name in NAMES], cut.numpy(), rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(path).model_max_length == 16 == loaded.tokenizer.model_max_length
    # Training cut the long text where inference now cuts it.
    assert encoder_student["trainer"].train_dataset[len(encoder_student["trainer"].train_dataset) - 1][
        "input_ids"] == ids[:16]


def test_a_sequence_classification_students_tokenizer_strips_texts(encoder_student):
    tokenizer = AutoTokenizer.from_pretrained(encoder_student["path"])
    assert tokenizer(" \u3000the market rose \n")["input_ids"] == tokenizer("the market rose")["input_ids"]
    raw = encoder_student["tokenizer"]
    assert tokenizer("the market rose")["input_ids"] == raw("the market rose")["input_ids"]


def test_a_student_whose_tokenizer_has_its_own_class_still_strips_once_saved(tmp_path, encoder_dir, data,
                                                                             encoder_student):
    """A student whose tokenizer_config names a model's own class (here GPT2Tokenizer, over the same byte-level
    vocabulary), which transformers 5 rebuilds from its vocabulary on load, dropping the Strip the saved
    tokenizer.json holds: reloaded, it gave other tokens for texts with white space around them."""
    student = copy_naming_tokenizer_class(encoder_dir, tmp_path / "student", "GPT2Tokenizer")
    assert type(AutoTokenizer.from_pretrained(student)).__name__ == "GPT2Tokenizer"
    train_encoder_student(student, tmp_path / "out", data, encoder_student["long"], max_steps=1)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer(" \u3000the market rose \n")["input_ids"] == tokenizer("the market rose")["input_ids"]
    assert tokenizer("the market rose")["input_ids"] == encoder_student["tokenizer"]("the market rose")["input_ids"]


def test_a_sequence_classification_student_truncates_on_the_side_it_trained(tmp_path, encoder_dir, data,
                                                                             encoder_student):
    long, raw = encoder_student["long"], encoder_student["tokenizer"]
    trainer = train_encoder_student(encoder_dir, tmp_path / "left", data, long, truncation_side="left", max_steps=1)
    ids = raw(long)["input_ids"]
    assert trainer.train_dataset[len(trainer.train_dataset) - 1]["input_ids"] == ids[-16:]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "left")
    assert tokenizer.truncation_side == "left" and tokenizer(long, truncation=True)["input_ids"] == ids[-16:]


@pytest.mark.parametrize("multi_label", [False, True])
def test_a_sequence_classification_student_is_calibrated_like_the_others(tmp_path, encoder_dir, multi_label):
    """The temperature fitted on validation is folded into the head, so the saved model serves calibrated
    probabilities everywhere (fitting again on its logits finds 1); a multi-label student keeps its tuned thresholds,
    and `TextClassifier` loads both."""
    from hf_clf_ext.calibration import fit_temperature

    def encoded(labels):
        return [[float(name in row) for name in NAMES] for row in labels] if multi_label else \
            [NAMES.index(label) for label in labels]

    (texts, labels), (val_texts, val_labels) = two_class(40, 1, multi_label), two_class(16, 2, multi_label)
    space = LabelSpace(names=tuple(NAMES), multi_label=multi_label)
    args = student_args(tmp_path, num_train_epochs=3, load_best_model_at_end=False, gradient_accumulation_steps=1)
    torch.manual_seed(0)
    model, tokenizer = stock_student(str(encoder_dir), space)
    soft = soften(np.clip(np.asarray(encoded(labels), dtype=float) if multi_label else onehot(labels), 0.1, 0.9),
                  args.distill_temperature, multi_label=multi_label)
    trainer = train_stock_student(args, space, model, tokenizer, texts, encoded(labels), soft,
                                  np.zeros(len(texts), bool), validation=(val_texts, encoded(val_labels)))
    config = trainer.model.config
    assert config.temperature_folded != pytest.approx(1.0, abs=0.05)
    logits = trainer.predict(trainer.eval_dataset).predictions
    assert fit_temperature(logits, encoded(val_labels), space.problem_type) == pytest.approx(1.0, abs=1e-3)
    assert (config.decision_thresholds is not None) == multi_label
    trainer.save_model(tmp_path / "student")
    loaded = TextClassifier.from_pretrained(tmp_path / "student")
    assert loaded.thresholds == config.decision_thresholds
    served = [[row["probabilities"][name] for name in NAMES] for row in loaded.classify(val_texts)]
    expected = torch.tensor(logits).sigmoid() if multi_label else torch.tensor(logits).softmax(-1)
    np.testing.assert_allclose(served, expected.numpy(), atol=1e-5)


def test_a_sequence_classification_students_accumulated_step_is_the_big_batchs(tmp_path, encoder_dir, data):
    """2 accumulated batches of 4 rows take the step of one batch of 8: the distillation loss is a mean over rows,
    so it is divided by the accumulation steps (Trainer would take BERT's as already scaled, and step twice as far).
    """
    texts, labels = data["train"]
    space = LabelSpace(names=tuple(NAMES), multi_label=False)
    heads = []
    for batch, accumulation in ((8, 1), (4, 2)):
        args = student_args(tmp_path / str(batch), max_steps=1, per_device_train_batch_size=batch,
                            gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=0.5,
                            max_grad_norm=0.0, lr_scheduler_type="constant")
        torch.manual_seed(0)
        model, tokenizer = stock_student(str(encoder_dir), space, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0)
        soft = soften(np.clip(onehot(labels), 0.1, 0.9), args.distill_temperature, multi_label=False)
        trainer = train_stock_student(args, space, model, tokenizer, texts, [NAMES.index(x) for x in labels], soft,
                                      np.zeros(len(texts), bool))
        heads.append(trainer.model.classifier.weight.detach().clone())
    torch.testing.assert_close(heads[1], heads[0], atol=1e-5, rtol=1e-4)


def test_a_truncated_decoder_student_saves_its_training_length(tmp_path, tiny_lm_dirs, data):
    texts, labels = data["train"]
    args = student_args(tmp_path / "decoder", max_length=24, student_layers=1, pooling_suffix="\nTopic:")
    soft = soften(np.clip(onehot(labels), 0.1, 0.9), 2.0, multi_label=False)
    distillation = {}
    trainer = _last_token_student(args, LabelSpace(names=tuple(NAMES), multi_label=False),
                                  str(tiny_lm_dirs["llama", "pad"]), {}, texts, labels, soft,
                                  np.zeros(len(texts), bool), None, distillation)
    reserve = len(unwrap_classifier(trainer.model).config.suffix_token_ids)
    assert reserve >= 1 and "first 1 of 2 layers" in distillation["student"]
    trainer.save_model()
    assert AutoTokenizer.from_pretrained(tmp_path / "decoder").model_max_length == 24 - reserve
    assert TextClassifier.from_pretrained(tmp_path / "decoder").tokenizer.model_max_length == 24 - reserve


# --- 4. texts normalised as training normalised them -----------------------------------------------------------------


def test_tfidf_sees_padded_texts_as_training_did(data):
    texts, labels = data["train"]
    model = TfidfClassifier.fit([f"  {text}\n" for text in texts], onehot(labels), NAMES, multi_label=False)
    stripped = TfidfClassifier.fit(texts, onehot(labels), NAMES, multi_label=False)
    np.testing.assert_allclose(model.coef, stripped.coef)
    padded = ["  the market rose \n", "\u3000striker scored\u2028"]
    plain = ["the market rose", "striker scored"]
    np.testing.assert_array_equal(model.predict_proba(padded), model.predict_proba(plain))
    np.testing.assert_array_equal(model.logits(padded), model.logits(plain))
    assert model.classify(padded) == model.classify(plain)


def test_pool_texts_are_normalised_before_they_are_fingerprinted(tmp_path, teacher_dir):
    plain = ["the market rose", "striker scored twice"]
    padded = ["  the market rose \n", "\u3000striker scored twice\t"]
    assert check_pool_texts(padded) == plain and fingerprint(check_pool_texts(padded)) == fingerprint(plain)
    teacher = TextClassifier.from_pretrained(teacher_dir)
    path = tmp_path / "labels.jsonl"
    first = label_pool(teacher, plain, path, progress=False)
    np.testing.assert_array_equal(label_pool(teacher, padded, path, progress=False), first)  # the same file serves
    assert len(path.read_text().splitlines()) == 1 + len(plain)


# --- 5. numbers, files and folders refused ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_distillation_temperature_must_be_positive_and_finite(temperature, data):
    p = np.array([[0.7, 0.3]])
    with pytest.raises(ValueError, match="temperature"):
        soften(p, temperature, multi_label=False)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(torch.zeros(1, 2), torch.tensor(p), torch.tensor([0]), torch.tensor([True]),
                          multi_label=False, temperature=temperature, gold_weight=0.5)
    texts, labels = data["train"]
    model = TfidfClassifier.fit(texts, onehot(labels), NAMES, multi_label=False)
    with pytest.raises(ValueError, match="temperature"):
        TfidfClassifier(NAMES, False, model.vectorizer, model.coef, model.intercept, temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        model.temperature = temperature  # as fit_tfidf_student sets it


@pytest.mark.parametrize("student_type", ["sequence_classification", "tfidf"])
def test_options_of_a_decoder_student_are_refused_for_other_students(tmp_path, student_type):
    """A head built from an LM's output embeddings, or a cut to some layers, cannot take effect on a BERT-class or
    TF-IDF student: refused when the config is read, not ignored."""
    with pytest.raises(ValueError, match="head_init='label_names' applies to a 'last_token' student only"):
        student_args(tmp_path, student_type=student_type, head_init="label_names")
    with pytest.raises(ValueError, match="student_layers applies to a 'last_token' student only"):
        student_args(tmp_path, student_type=student_type, student_layers=1)
    assert student_args(tmp_path, student_type="last_token", head_init="label_names").head_init == "label_names"


@pytest.mark.parametrize("student_type", ["last_token", "sequence_classification", "tfidf"])
def test_settings_that_cannot_take_effect_on_a_student_are_refused(tmp_path, student_type):
    """Every student learns the distillation loss: a focal loss, class weights or label smoothing would change
    nothing in training (and only the evaluation loss); quantization reaches only a decoder loaded by name."""
    for option in ({"loss": "focal"}, {"class_weights": "balanced"}, {"label_smoothing_factor": 0.1}):
        with pytest.raises(ValueError, match=f"{next(iter(option))} cannot take effect on a student"):
            student_args(tmp_path, student_type=student_type, **option)
    if student_type == "last_token":
        assert student_args(tmp_path, quantization="4bit").quantization == "4bit"  # QLoRA on a student by name
        with pytest.raises(ValueError, match="cannot take effect on a decoder cut to student_layers"):
            student_args(tmp_path, quantization="4bit", student_layers=1)
    else:
        with pytest.raises(ValueError, match=f"cannot take effect on a '{student_type}' student"):
            student_args(tmp_path, student_type=student_type, quantization="8bit")
    if student_type == "tfidf":
        with pytest.raises(ValueError, match="leaves no checkpoint to resume"):
            student_args(tmp_path, student_type="tfidf", resume_from_checkpoint="true")


def test_an_interrupted_student_resumes_from_its_checkpoint(tmp_path, data, teacher_dir, encoder_dir):
    """A distillation whose output folder holds a student's checkpoints continues from the last one with
    --resume_from_checkpoint true (as the refusal to write over them advises), the teacher's labels reused."""
    files = write_files(tmp_path, data)
    output = tmp_path / "student"
    config = distill_yaml(tmp_path, teacher_dir, files, output, student_type="sequence_classification",
                          model_name_or_path=str(encoder_dir), max_length=32, per_device_train_batch_size=25,
                          gradient_accumulation_steps=1, learning_rate=1e-3, optim="adamw_torch", num_train_epochs=1,
                          eval_strategy="epoch", save_strategy="epoch", save_total_limit=None)
    recipe("distill").main(["--config", str(config)])
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-4"]  # 100 rows, batches of 25
    with pytest.raises(SystemExit, match="already holds a saved model"):
        recipe("distill").main(["--config", str(config), "--num_train_epochs", "2"])
    recipe("distill").main(["--config", str(config), "--num_train_epochs", "2", "--resume_from_checkpoint", "true"])
    state = json.loads((output / "checkpoint-8" / "trainer_state.json").read_text())
    assert [entry["epoch"] for entry in state["log_history"] if "eval_loss" in entry] == [1.0, 2.0]
    assert TextClassifier.from_pretrained(output).classify(data["test"][0][:2])


def test_a_nan_gold_weight_and_nan_targets_are_errors(tmp_path, data):
    with pytest.raises(ValueError, match="gold_weight"):
        distillation_loss(torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), torch.tensor([0]), torch.tensor([True]),
                          multi_label=False, temperature=2.0, gold_weight=float("nan"))
    texts, labels = data["train"]
    targets = onehot(labels)
    targets[3] = [np.nan, 1.0]
    for multi_label in (False, True):
        with pytest.raises(ValueError, match=r"rows \[3\]"):
            TfidfClassifier.fit(texts, targets, NAMES, multi_label=multi_label)
    model = TfidfClassifier.fit(texts, onehot(labels), NAMES, multi_label=False)
    model.save_pretrained(tmp_path / "tfidf")
    settings = json.loads((tmp_path / "tfidf" / SETTINGS_FILE).read_text())
    (tmp_path / "tfidf" / SETTINGS_FILE).write_text(json.dumps({**settings, "temperature": float("nan")}))
    with pytest.raises(ValueError, match="temperature"):
        TfidfClassifier.from_pretrained(tmp_path / "tfidf")


def test_a_teacher_giving_nan_is_an_error_and_nothing_is_written(tmp_path, teacher_dir):
    teacher = TextClassifier.from_pretrained(teacher_dir)
    classify = teacher.classify

    def broken(batch, **kwargs):
        results = classify(batch, **kwargs)
        results[0]["probabilities"]["sport"] = float("nan")
        return results

    teacher.classify = broken
    path = tmp_path / "labels.jsonl"
    with pytest.raises(ValueError, match="not finite numbers"):
        label_pool(teacher, ["the market rose", "striker scored"], path, progress=False)
    assert not path.exists()  # no NaN row to train on: no part was written, nor the file
    assert os.listdir(f"{path}.parts") == ["header.json"]


def test_a_damaged_row_of_a_labels_file_is_an_error(tmp_path, teacher_dir):
    teacher = TextClassifier.from_pretrained(teacher_dir)
    texts = ["the market rose", "striker scored", "film music"]
    path = tmp_path / "labels.jsonl"
    label_pool(teacher, texts, path, progress=False)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"index": 0, "probabilities": [1.0]})  # one probability for two labels
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2.*damaged"):
        label_pool(teacher, texts, path, progress=False)


def test_a_student_is_never_saved_over_its_teacher(tmp_path, teacher_dir):
    for output in (str(teacher_dir), str(teacher_dir) + "/", str(teacher_dir / ".." / teacher_dir.name)):
        with pytest.raises(ValueError, match="teacher's folder"):
            DistillationConfig(teacher=str(teacher_dir), output_dir=output, student_type="tfidf")
    DistillationConfig(teacher=str(teacher_dir), output_dir=str(tmp_path / "student"), student_type="tfidf")
    for name in ("teacher_batch_size", "tfidf_ngram_max", "tfidf_min_df"):
        with pytest.raises(ValueError, match=name):
            DistillationConfig(teacher=str(teacher_dir), output_dir=str(tmp_path / "s"), **{name: 0})
    with pytest.raises(ValueError, match="tfidf_C"):
        DistillationConfig(teacher=str(teacher_dir), output_dir=str(tmp_path / "s"), tfidf_C=0.0)


def test_a_stale_classifier_in_output_dir_that_would_load_instead_is_an_error(tmp_path, data, teacher_dir):
    files = write_files(tmp_path, data)
    output = tmp_path / "out"
    output.mkdir()
    (output / "instruction_prompt.json").write_text("{}")  # an instruction classifier saved there before
    config = distill_yaml(tmp_path, teacher_dir, files, output, overwrite_output_dir=True)
    with pytest.raises(ValueError, match="would load instead of the tfidf model this run saves"):
        recipe("distill").main(["--config", str(config)])
    assert not (output / SETTINGS_FILE).exists() and not (tmp_path / "teacher_labels.jsonl").exists()


def test_a_stock_students_tokenizer_comes_from_the_weights_revision(monkeypatch, encoder_dir):
    import transformers

    seen = {}
    loader = transformers.AutoTokenizer.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        return loader(name)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        lambda name, **kwargs: SimpleNamespace(name=name, **kwargs))
    stock_student(str(encoder_dir), LabelSpace(names=tuple(NAMES), multi_label=False), revision="v1",
                  local_files_only=True, dtype="float32")
    assert seen == {"revision": "v1", "local_files_only": True}
