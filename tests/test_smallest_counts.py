"""The smallest case of every count: two classes, two labels of a multi-label task, a one-row evaluation set and a
single text, through training, calibration, saving, loading and prediction of both approaches."""

import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM

from hf_clf_ext import InstructionClassifier, InstructionPrompt, TextClassifier, Verbalizer, classify_texts

from testing_utils import make_trainer

TWO = {"business": "market", "sport": "striker"}


def two_classes(n: int, seed: int, multi_label: bool = False) -> Dataset:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        names = ([name for name in TWO if rng.random() < 0.5] or [list(TWO)[i % 2]] if multi_label
                 else [list(TWO)[i % 2]])
        words = list(rng.choice(["the", "of", "after", "new", "season", "growth"], size=6))
        for name in names:
            words.insert(int(rng.integers(len(words) + 1)), TWO[name])
        texts.append(" ".join(words))
        labels.append(sorted(names) if multi_label else names[0])
    return Dataset.from_dict({"text": texts, "label": labels})


@pytest.mark.parametrize("multi_label", [False, True])
def test_two_classes_train_calibrate_save_and_predict(tiny_lm_dirs, tokenizer, tmp_path, multi_label):
    trainer = make_trainer(tiny_lm_dirs["llama", "pad"], tokenizer, tmp_path, train=two_classes(32, 0, multi_label),
                           evaluation=two_classes(16, 1, multi_label), num_train_epochs=3,
                           load_best_model_at_end=False, eval_strategy="no")
    trainer.train()
    trainer.calibrate()
    trainer.save_model()
    config = trainer.model.config if hasattr(trainer.model, "config") else None
    assert config is None or config.num_labels == 2
    texts = ["the market rose", "a striker scored", "new season"]
    expected = classify_texts(trainer.model, trainer.processing_class, texts)
    loaded = TextClassifier.from_pretrained(tmp_path / "out")
    assert loaded.labels == ["business", "sport"]
    got = loaded.classify(texts)
    for mine, theirs in zip(expected, got):
        assert set(theirs["probabilities"]) == {"business", "sport"}
        np.testing.assert_allclose(list(theirs["probabilities"].values()), list(mine["probabilities"].values()),
                                   atol=1e-5)
        if not multi_label:
            assert sum(theirs["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    if multi_label:
        assert loaded.thresholds is not None and len(loaded.thresholds) == 2
    # One row, one text.
    one = trainer.evaluate_dataset(two_classes(1, 2, multi_label), metric_key_prefix="one")
    assert "one_f1_macro" in one
    assert len(loaded.classify(["market"])) == 1


@pytest.mark.parametrize("multi_label", [False, True])
def test_two_labels_in_the_instruction_approach(tiny_lm_dirs, tokenizer, multi_label):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"])
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(use_chat_template=False),
                                       Verbalizer(["business", "sport"], multi_label=multi_label))
    scored = classifier.classify(["the market rose", "a striker scored"], method="score")
    generated = classifier.classify(["the market rose", "a striker scored"])
    for result in scored:
        assert set(result["probabilities"]) == {"business", "sport"}
        if not multi_label:
            assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    for result in generated:
        named = result["labels"] if multi_label else [result["label"]]
        assert named and set(named) <= {"business", "sport"}
    assert len(classifier.classify(["market"], method="score")) == 1
