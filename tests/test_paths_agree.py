"""One set of messy texts (white space around them, unicode, past max_length, near-empty) through every inference path
of every saved kind: each gives what the in-memory model gives for the texts as training normalised them.

Kinds: a last-token classifier saved as adapter + head (base from a Hub-layout cache) and merged, its stock export, a
TF-IDF student, a truncated-decoder student, a sequence-classification student, an instruction classifier's label
scoring. Paths: `classify_texts` in memory, `TextClassifier`, `hf-clf predict`, `pipeline()` with the package, and
plain transformers (`AutoTokenizer` + `AutoModelForSequenceClassification`; the stock export's pipeline in a fresh
process that never imports the package).
"""

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
                          BertModel, PreTrainedTokenizerFast, pipeline)

from hf_clf_ext import (InstructionClassifier, InstructionPrompt, LastTokenTrainer, TextClassifier,
                        TfidfClassifier, Verbalizer, cli, classify_texts)
from hf_clf_ext.export import export_stock
from hf_clf_ext.texts import normalize_text

from conftest import publish, run_fresh
from testing_utils import arguments, synthetic
from testing_utils import recipe

BASE = "tiny-org/paths-llama"
LONG = " ".join(["the market shares rose sharply after the bank cut interest rates"] * 12)  # past max_length
MESSY = [
    "  the bank cut interest rates\n",
    "\u3000the striker scored twice\u00a0 \t",
    "\r\nphones sold well!\r\n",
    " x ",
    "ünïcödé “film” 🙂 café\u2028",
    LONG + " \n",
]
CLEAN = [normalize_text(text) for text in MESSY]
MAX_LENGTH = 32


def table(results, labels) -> np.ndarray:
    return np.array([[result["probabilities"][name] for name in labels] for result in results])


def plain(folder, texts) -> np.ndarray:
    """Plain transformers: the saved tokenizer (truncating at its saved length) and the Auto class, one text each."""
    tokenizer, model = (AutoTokenizer.from_pretrained(folder),
                        AutoModelForSequenceClassification.from_pretrained(folder))
    with torch.no_grad():
        logits = [model(**tokenizer([text], truncation=True, return_tensors="pt")).logits[0] for text in texts]
    return torch.stack(logits).softmax(-1).numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_lm_dirs, tokenizer_dirs):
    folder = tmp_path_factory.mktemp("paths")
    hub = folder / "hub"
    hub.mkdir()
    publish(tiny_lm_dirs["llama", "pad"], BASE, hub)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    args = arguments(folder, num_train_epochs=2, eval_strategy="no", load_best_model_at_end=False,
                     max_length=MAX_LENGTH)
    trainer = LastTokenTrainer(BASE, args=args, train_dataset=synthetic(24, 0), processing_class=tokenizer,
                                         model_init_kwargs={"cache_dir": str(hub)})
    trainer.train()
    trainer.save_model()  # adapter + head: the base is a Hub id
    labels = list(trainer.label_space.names)
    expected = table(classify_texts(trainer.model, trainer.processing_class, CLEAN), labels)
    in_memory = table(classify_texts(trainer.model, trainer.processing_class, MESSY), labels)
    trainer.save_merged(str(folder / "merged"))
    export_stock(folder / "merged", folder / "stock")
    return {"folder": folder, "hub": hub, "labels": labels, "expected": expected, "in_memory": in_memory,
            "lm": tiny_lm_dirs["llama", "pad"], "tokenizer_dirs": tokenizer_dirs}


def test_last_token_saves_agree_with_the_in_memory_model(saved, capsys):
    folder, labels, expected = saved["folder"], saved["labels"], saved["expected"]
    assert len({row.argmax() for row in expected}) > 1 or np.ptp(expected[:, 0]) > 1e-3  # texts tell apart
    np.testing.assert_allclose(saved["in_memory"], expected, atol=1e-5)
    adapter = TextClassifier.from_pretrained(folder / "out", cache_dir=str(saved["hub"]))
    np.testing.assert_allclose(table(adapter.classify(MESSY), labels), expected, atol=1e-5, err_msg="adapter")
    for kind in ("merged", "stock"):
        loaded = TextClassifier.from_pretrained(folder / kind)
        np.testing.assert_allclose(table(loaded.classify(MESSY), labels), expected, atol=1e-5, err_msg=kind)
        np.testing.assert_allclose(plain(folder / kind, MESSY), expected, atol=1e-5, err_msg=f"{kind}, plain")
        piped = pipeline("text-classification", model=str(folder / kind), top_k=None)(MESSY, truncation=True)
        np.testing.assert_allclose([[{r["label"]: r["score"] for r in rows}[n] for n in labels] for rows in piped],
                                   expected, atol=1e-5, err_msg=f"{kind}, pipeline")
    capsys.readouterr()
    assert cli.main(["predict", "--model", str(folder / "merged"), *MESSY]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == MESSY  # the user's texts, as given
    np.testing.assert_allclose(table(lines, labels), expected, atol=1e-5, err_msg="hf-clf predict")


# Texts whose start and end point at different topics, each past max_length: which part a path keeps decides.
TWO_ENDS = [" ".join(["the striker scored twice in the final"] * 8) + " the bank cut interest rates again",
            " ".join(["the bank cut interest rates again"] * 8) + " the striker scored twice in the final"]


def test_every_saved_kind_keeps_the_end_a_left_truncating_model_trained_on(tmp_path, tiny_lm_dirs, tokenizer_dirs):
    """truncation_side="left" (keep the end): the saved tokenizer must keep it too, or every reloaded kind reads the
    start of a long text where training read its end (transformers writes `truncation_side` into
    tokenizer_config.json only from init_kwargs)."""
    import copy

    from hf_clf_ext.export import export_onnx

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    args = arguments(tmp_path, num_train_epochs=2, eval_strategy="no", load_best_model_at_end=False,
                     max_length=MAX_LENGTH, truncation_side="left")
    trainer = LastTokenTrainer(str(tiny_lm_dirs["llama", "pad"]), args=args, train_dataset=synthetic(24, 0),
                               processing_class=tokenizer)
    trainer.train()
    labels = list(trainer.label_space.names)
    expected = table(classify_texts(trainer.model, trainer.processing_class, TWO_ENDS), labels)
    # Any untruncated call (a user counting tokens) resets the truncation the backend would have saved in
    # tokenizer.json, the one place the side survived before it was written into tokenizer_config.json.
    trainer.processing_class(["how many tokens is this?"])
    trainer.save_merged(str(tmp_path / "merged"))
    export_stock(tmp_path / "merged", tmp_path / "stock")
    facts = export_onnx(tmp_path / "stock", tmp_path / "onnx")
    assert facts["truncation_side"] == "left"
    start = copy.deepcopy(trainer.processing_class)
    start.truncation_side = "right"
    assert np.abs(table(classify_texts(trainer.model, start, TWO_ENDS), labels) - expected).max() > 1e-4  # it matters
    for kind in ("merged", "stock", "onnx"):
        loaded = TextClassifier.from_pretrained(tmp_path / kind)
        np.testing.assert_allclose(table(loaded.classify(TWO_ENDS), labels), expected, atol=1e-4, err_msg=kind)
    np.testing.assert_allclose(plain(tmp_path / "stock", TWO_ENDS), expected, atol=1e-5, err_msg="stock, plain")
    assert "keeping the end of a longer text" in (tmp_path / "onnx" / "README.md").read_text()


def test_the_stock_export_strips_without_the_package(saved):
    code = f"""
import json, sys
from transformers import pipeline
piped = pipeline("text-classification", model={str(saved["folder"] / "stock")!r}, top_k=None)
rows = piped(json.loads({json.dumps(MESSY)!r}), truncation=True)
print("RESULT", json.dumps({{"rows": [{{r["label"]: r["score"] for r in row}} for row in rows],
                            "package": "hf_clf_ext" in sys.modules}}))
"""
    loaded = run_fresh(code)
    assert loaded["package"] is False
    np.testing.assert_allclose([[row[n] for n in saved["labels"]] for row in loaded["rows"]], saved["expected"],
                               atol=1e-5)


def test_a_tfidf_student_sees_normalised_texts(saved):
    train = synthetic(24, 1)
    names = saved["labels"]
    targets = np.eye(len(names))[[names.index(label) for label in train["label"]]]
    student = TfidfClassifier.fit(list(train["text"]) + ["ünïcödé film"], np.r_[targets, targets[:1]], names, False)
    student.save_pretrained(saved["folder"] / "tfidf")
    expected = table(student.classify(CLEAN), names)
    loaded = TextClassifier.from_pretrained(saved["folder"] / "tfidf")
    np.testing.assert_allclose(table(loaded.classify(MESSY), names), expected, atol=1e-12)
    np.testing.assert_allclose(table(student.classify(MESSY), names), expected, atol=1e-12)


@pytest.mark.parametrize("student_type", ["last_token", "sequence_classification"])
def test_students_truncate_and_normalise_as_they_trained(saved, student_type, tmp_path):
    files = {}
    for split, (rows, seed) in {"train": (24, 1), "test": (12, 3), "pool": (32, 4)}.items():
        files[split] = tmp_path / f"{split}.jsonl"
        data = synthetic(rows, seed=seed)
        (data.remove_columns("label") if split == "pool" else data).to_json(files[split])
    model = saved["lm"]
    if student_type == "sequence_classification":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(saved["tokenizer_dirs"]["pad"])
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=256,
                             pad_token_id=tokenizer.pad_token_id)).save_pretrained(tmp_path / "bert")
        tokenizer.save_pretrained(tmp_path / "bert")
        model = tmp_path / "bert"
    config = tmp_path / "distill.yaml"
    config.write_text(yaml.safe_dump({
        "teacher": str(saved["folder"] / "merged"), "student_type": student_type, "model_name_or_path": str(model),
        "train_file": str(files["train"]), "test_file": str(files["test"]), "pool_file": str(files["pool"]),
        "output_dir": str(tmp_path / "student"), "num_train_epochs": 1, "per_device_train_batch_size": 8,
        "optim": "adamw_torch", "max_length": MAX_LENGTH, "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "eval_strategy": "no", "load_best_model_at_end": False,
        "lora_target_modules": ["q_proj", "v_proj"], **({"student_layers": 1} if student_type == "last_token" else {}),
    }))
    recipe("distill").main(["--config", str(config)])
    student = TextClassifier.from_pretrained(tmp_path / "student")
    names = student.labels
    expected = table(student.classify(CLEAN), names)
    np.testing.assert_allclose(table(student.classify(MESSY), names), expected, atol=1e-5)
    np.testing.assert_allclose(plain(tmp_path / "student", MESSY), expected, atol=1e-5, err_msg="plain")
    saved_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "student")
    assert saved_tokenizer.model_max_length <= MAX_LENGTH  # the length it trained at (less a pooling suffix)
    # Truncated where training truncated: the long text scores as its first tokens do.
    ids = saved_tokenizer(CLEAN[-1], truncation=True)["input_ids"]
    cut = student.classify([saved_tokenizer.decode(ids, skip_special_tokens=True)])
    np.testing.assert_allclose(table(cut, names)[0], expected[-1], atol=1e-5)


def test_instruction_scoring_sees_normalised_texts(saved, tmp_path):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(saved["tokenizer_dirs"]["pad"])
    model = AutoModelForCausalLM.from_pretrained(saved["lm"])
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(use_chat_template=False),
                                       Verbalizer(saved["labels"]), max_length=128)
    classifier.save_pretrained(tmp_path / "instruction")
    expected = classifier.classify(CLEAN, method="score")
    assert classifier.prompt_ids(MESSY) == classifier.prompt_ids(CLEAN)
    loaded = TextClassifier.from_pretrained(tmp_path / "instruction")
    for results in (classifier.classify(MESSY, method="score"), loaded.classify(MESSY, method="score")):
        np.testing.assert_allclose(table(results, saved["labels"]), table(expected, saved["labels"]), atol=1e-5)
    assert [r["label"] for r in loaded.classify(MESSY)] == [r["label"] for r in classifier.classify(CLEAN)]
