"""LastTokenTrainer on tiny models: learning, early stopping, resuming, calibration, saving, bad input."""


import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback

from hf_clf_ext import (
    LastTokenClassifierForSequenceClassification,
    LastTokenTrainer,
    LastTokenConfig,
    classify_texts,
)
from hf_clf_ext.last_token.trainer import balanced_class_weights, focal_loss
from hf_clf_ext.labels import LabelSpace

from conftest import publish
from testing_utils import FILLER, KEYWORDS, arguments, make_trainer, synthetic  # noqa: F401


@pytest.fixture
def llama_dir(tiny_lm_dirs):
    return tiny_lm_dirs["llama", "pad"]


def test_single_label_training_learns_the_task(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, calibrate=False)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_f1_macro"] >= 0.9, after
    assert after["eval_f1_macro"] > before["eval_f1_macro"] + 0.3, (before, after)
    assert {"eval_accuracy", "eval_ece", "eval_brier", "eval_roc_auc", "eval_f1_sport"} <= set(after)


def test_multi_label_training_learns_the_task(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(
        llama_dir, tokenizer, tmp_path,
        train=synthetic(120, seed=1, multi_label=True), evaluation=synthetic(48, seed=2, multi_label=True),
        num_train_epochs=6, metric_for_best_model="f1_micro",
    )
    assert trainer.label_space.multi_label
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_f1_micro"] >= 0.85, metrics
    assert {"eval_subset_accuracy", "eval_hamming_loss"} <= set(metrics)
    config = trainer.model.config
    assert config.problem_type == "multi_label_classification"
    assert len(config.decision_thresholds) == 3 and config.temperature > 0


def test_early_stopping_stops(llama_dir, tokenizer, tmp_path):
    # Nothing is learned at learning rate 0, so the metric never improves after the first evaluation.
    trainer = make_trainer(
        llama_dir, tokenizer, tmp_path, learning_rate=0.0, head_learning_rate=0.0, num_train_epochs=10,
        early_stopping_patience=2, calibrate=False,
    )
    trainer.train()
    evaluations = [log for log in trainer.state.log_history if "eval_f1_macro" in log]
    assert len(evaluations) == 3, evaluations
    assert trainer.state.epoch == 3


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_resuming_from_a_checkpoint_ends_with_the_same_weights(llama_dir, tokenizer, tmp_path):
    kwargs = dict(num_train_epochs=2, calibrate=False, load_best_model_at_end=False, early_stopping_patience=None,
                  save_total_limit=None)
    full = make_trainer(llama_dir, tokenizer, tmp_path / "a", **kwargs)
    full.train()
    steps_per_epoch = full.state.global_step // 2
    resumed = make_trainer(llama_dir, tokenizer, tmp_path / "b", **kwargs)
    counter = StepCounter()
    resumed.add_callback(counter)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / f"checkpoint-{steps_per_epoch}"))
    assert counter.steps == list(range(steps_per_epoch + 1, 2 * steps_per_epoch + 1)), "only the second epoch runs"
    expected = {k: v for k, v in full.model.state_dict().items()}
    actual = resumed.model.state_dict()
    trained = [k for k in expected if "lora_" in k or "score" in k]
    assert trained
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=key)


def test_calibration_survives_save_and_load(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(
        llama_dir, tokenizer, tmp_path, train=synthetic(96, seed=1, multi_label=True),
        evaluation=synthetic(48, seed=2, multi_label=True), num_train_epochs=3, metric_for_best_model="f1_micro",
    )
    trainer.train()
    results = trainer.calibration_results
    config = trainer.model.config
    assert results["temperature"] == config.temperature != 1.0
    assert results["decision_thresholds"] == config.decision_thresholds and len(config.decision_thresholds) == 3
    assert "uncalibrated_ece" in results["before"] and "calibrated_ece" in results["after"]
    for name, folder in (("adapter", tmp_path / "adapter"), ("merged", tmp_path / "merged")):
        trainer.save_model(str(folder)) if name == "adapter" else trainer.save_merged(str(folder))
        loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        assert loaded.config.temperature == results["temperature"], name
        assert loaded.config.decision_thresholds == results["decision_thresholds"], name
        texts = list(synthetic(8, seed=5, multi_label=True)["text"])
        expected = classify_texts(trainer.model, tokenizer, texts)
        actual = classify_texts(loaded, tokenizer, texts)
        assert [a["labels"] for a in actual] == [e["labels"] for e in expected], name
        for e, a in zip(expected, actual):
            np.testing.assert_allclose(list(a["probabilities"].values()), list(e["probabilities"].values()), atol=1e-5)


def test_paper_defaults_train_with_8bit_adamw_checkpointing_and_length_grouping(llama_dir, tokenizer, tmp_path):
    args = LastTokenConfig(
        output_dir=str(tmp_path / "out"), num_train_epochs=1, max_length=64, report_to="none", use_cpu=True,
        gradient_checkpointing=True, train_sampling_strategy="group_by_length", logging_steps=1,
    )
    assert (args.optim, args.lr_scheduler_type, args.lora_r, args.lora_alpha, args.lora_dropout) == (
        "adamw_8bit", "linear", 8, 16, 0.05)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8
    trainer = LastTokenTrainer(
        model=str(llama_dir), args=args, train_dataset=synthetic(32, seed=1), eval_dataset=synthetic(12, seed=2),
        processing_class=tokenizer,
    )
    head = trainer.model.get_base_model().score.modules_to_save["default"].weight.detach().clone()
    trainer.train()
    assert "bitsandbytes" in type(trainer.optimizer.optimizer).__module__
    assert trainer.model.get_base_model().model.gradient_checkpointing
    assert trainer.state.global_step == 4
    assert not torch.equal(trainer.model.get_base_model().score.modules_to_save["default"].weight, head)


def test_eight_bit_backbone_trains_on_cpu(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, quantization="8bit", num_train_epochs=1, calibrate=False)
    classifier = trainer.model.get_base_model()
    assert classifier.is_loaded_in_8bit and classifier.score.modules_to_save["default"].weight.dtype == torch.float32
    trainer.train()
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)


def test_a_local_backbone_saves_merged_and_loads_with_auto_classes(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, num_train_epochs=1, calibrate=False)
    trainer.train()
    texts = list(synthetic(6, seed=7)["text"])
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
    # A local backbone has no Hub id an adapter could name on another machine: the save is whole (adapter + head
    # saves are tested through a Hub-layout cache in test_hub_round_trip.py).
    trainer.save_model(str(tmp_path / "merged"))
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert not (tmp_path / "merged" / "adapter").exists() and \
        not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert type(merged) is LastTokenClassifierForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=1e-4)
    reserve = len(merged.config.suffix_token_ids)
    assert merged.config.pooling_suffix == "\nLabel:" and reserve > 0
    assert PreTrainedTokenizerFast.from_pretrained(tmp_path / "merged").model_max_length == 64 - reserve


def test_four_bit_backbone_trains_on_cpu(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(
        llama_dir, tokenizer, tmp_path, quantization="4bit", bnb_4bit_compute_dtype="float32", num_train_epochs=2,
        calibrate=False,
    )
    classifier = trainer.model.get_base_model()
    assert classifier.is_loaded_in_4bit
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "score" in name for name in trainable)
    head_before = classifier.score.modules_to_save["default"].weight.detach().clone()
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0], losses
    assert not torch.equal(classifier.score.modules_to_save["default"].weight, head_before)


def test_head_has_its_own_learning_rate(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, learning_rate=1e-4, head_learning_rate=5e-3)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in optimizer.param_groups:
        is_head = {".score." in f".{names[id(p)]}" for p in group["params"]}
        assert len(is_head) == 1
        assert group["lr"] == (5e-3 if is_head.pop() else 1e-4)


def test_pooling_suffix_and_template_are_applied(llama_dir, tokenizer, tmp_path):
    rows = Dataset.from_dict(
        {"title": ["market news", "striker wins", "film award"] * 4, "body": ["the bank", "a goal", "a star"] * 4,
         "topic": ["business", "sport", "entertainment"] * 4}
    )
    suffix = tokenizer("\nLabel:", add_special_tokens=False).input_ids  # before the trainer makes it strip texts
    trainer = make_trainer(
        llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows, text_columns=["title", "body"],
        text_template="{title}: {body}", label_column="topic", pooling_suffix="\nLabel:",
    )
    first = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert first == "market news: the bank"
    assert trainer.model.config.suffix_token_ids == suffix
    assert trainer.model.config.id2label == {0: "business", 1: "entertainment", 2: "sport"}


@pytest.mark.parametrize("side, kept", [("right", "alpha"), ("left", "omega")])
def test_truncation_keeps_the_start_or_the_end(llama_dir, tokenizer, tmp_path, side, kept):
    long_text = "alpha " + "the " * 200 + "omega"
    rows = Dataset.from_dict({"text": [long_text, "market", "striker"], "label": ["business", "business", "sport"]})
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows, truncation_side=side)
    ids = trainer.train_dataset[0]["input_ids"]
    reserve = len(trainer.model.config.suffix_token_ids)
    assert len(ids) == 64 - reserve
    assert kept in tokenizer.decode(ids)


def test_classify_texts_sorts_batches_but_keeps_the_input_order(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, num_train_epochs=3, calibrate=False)
    trainer.train()
    texts = list(synthetic(9, seed=11)["text"]) + ["market " * 100]
    one_by_one = classify_texts(trainer.model, tokenizer, texts, batch_size=1)
    batched = trainer.classify(texts, batch_size=4)
    for single, batch in zip(one_by_one, batched):
        assert single["label"] == batch["label"]
        assert abs(sum(batch["probabilities"].values()) - 1) < 1e-5
        np.testing.assert_allclose(list(batch["probabilities"].values()), list(single["probabilities"].values()),
                                   atol=1e-5)
    with pytest.raises(ValueError, match=r"Texts \[1\] are empty"):
        classify_texts(trainer.model, tokenizer, ["market", "  "])


def test_balanced_weights_and_focal_loss():
    space = LabelSpace(names=("a", "b", "c"), multi_label=False)
    assert balanced_class_weights([0, 0, 0, 1], space) == pytest.approx([4 / 9, 4 / 3, 1.0])
    multi = LabelSpace(names=("a", "b"), multi_label=True)
    assert balanced_class_weights([[1, 0], [1, 1], [0, 0], [1, 0]], multi) == pytest.approx([1 / 3, 3.0])
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(focal_loss(logits, labels, False, gamma=0.0),
                               torch.nn.functional.cross_entropy(logits, labels))
    assert focal_loss(logits, labels, False, gamma=2.0) < focal_loss(logits, labels, False, gamma=0.0)
    hot = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    torch.testing.assert_close(
        focal_loss(logits[:2], hot, True, gamma=0.0),
        torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], hot),
    )


def test_focal_loss_and_balanced_weights_train(llama_dir, tokenizer, tmp_path):
    train = synthetic(96, seed=1).select(list(range(0, 96, 3)) + list(range(1, 96, 3)) + list(range(2, 40, 3)))
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, train=train, loss="focal", class_weights="balanced",
                           calibrate=False)
    weights = trainer.model.config.class_weights
    # Labels sort to business, entertainment, sport; entertainment (13 rows against 32 and 32) is the rarest.
    assert weights[1] > weights[0] == weights[2] > 0
    trainer.train()
    assert trainer.evaluate()["eval_f1_macro"] >= 0.8


# --- bad input -------------------------------------------------------------------------------------------------


def test_missing_columns_are_named(llama_dir, tokenizer, tmp_path):
    rows = synthetic(6, seed=1)
    with pytest.raises(ValueError, match="no column 'body'"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows, text_columns=["body"])
    with pytest.raises(ValueError, match="no column 'topic'"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows, label_column="topic")
    with pytest.raises(ValueError, match="evaluation data has no column 'label'"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows.remove_columns("label"))


def test_empty_text_is_rejected(llama_dir, tokenizer, tmp_path):
    rows = Dataset.from_dict({"text": ["market", "   ", "striker"], "label": ["business", "sport", "sport"]})
    with pytest.raises(ValueError, match=r"Rows \[1\] of the training data have empty text"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=synthetic(6, seed=2))


def test_mixed_label_types_are_rejected(llama_dir, tokenizer, tmp_path):
    # Arrow columns hold one type; what mixes in practice is missing labels among names, or float "ids".
    for labels in (["business", None, "sport"], [0.0, 1.0, 1.0]):
        rows = Dataset.from_dict({"text": ["market", "film", "striker"], "label": labels})
        with pytest.raises(ValueError, match="label column 'label' mixes or has unsupported types"):
            make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows)


def test_fewer_than_two_classes_is_rejected(llama_dir, tokenizer, tmp_path):
    rows = Dataset.from_dict({"text": ["market", "stocks"], "label": ["business", "business"]})
    with pytest.raises(ValueError, match="at least two classes"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows)


def test_unseen_evaluation_label_is_an_error_or_dropped_on_request(llama_dir, tokenizer, tmp_path, caplog):
    train = synthetic(12, seed=1)
    evaluation = Dataset.from_dict({"text": ["market up", "new gadget", "striker"],
                                    "label": ["business", "tech", "sport"]})
    with pytest.raises(ValueError,
                       match=r"1 rows of the evaluation data carry labels never seen in training \{'tech': 1\}"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=train, evaluation=evaluation)
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, train=train, evaluation=evaluation,
                           drop_unknown_labels=True)
    assert len(trainer.eval_dataset) == 2
    assert "dropped them" in caplog.text


def test_class_ids_need_names_unless_the_feature_has_them(llama_dir, tokenizer, tmp_path):
    rows = Dataset.from_dict({"text": ["market", "striker", "film"], "label": [0, 1, 2]})
    with pytest.raises(ValueError, match="holds class ids: give their names"):
        make_trainer(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows)
    named = rows.cast_column("label", ClassLabel(names=["business", "sport", "entertainment"]))
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, train=named, evaluation=named)
    assert trainer.model.config.id2label == {0: "business", 1: "sport", 2: "entertainment"}


def test_evaluation_class_ids_are_read_by_name(llama_dir, tokenizer, tmp_path):
    """A ClassLabel split listing the names in another order than training must still be scored right."""
    evaluation = Dataset.from_dict({"text": ["market up", "the film", "a striker"], "label": [0, 1, 2]}).cast_column(
        "label", ClassLabel(names=["business", "sport", "entertainment"])
    )
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, evaluation=evaluation)
    names = trainer.label_space.names
    assert [names[i] for i in trainer.eval_dataset["labels"]] == ["business", "sport", "entertainment"]
    ids = Dataset.from_dict({"text": ["market up"], "label": [1]})
    with pytest.raises(ValueError, match="is a class id, but this label space knows its classes by name"):
        make_trainer(llama_dir, tokenizer, tmp_path, evaluation=ids)


def test_a_user_peft_config_still_trains_and_saves_the_head(llama_dir, tokenizer, tmp_path, hub_cache):
    from peft import LoraConfig

    user_config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    trainer = LastTokenTrainer(
        model=publish(llama_dir, "tiny-org/llama", hub_cache), args=arguments(tmp_path, num_train_epochs=1,
        calibrate=False), train_dataset=synthetic(24, seed=1), eval_dataset=synthetic(12, seed=2),
        processing_class=tokenizer, peft_config=user_config, model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    assert user_config.task_type is None, "the user's config is not modified"
    assert any("score" in name for name, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    from safetensors import safe_open

    with safe_open(tmp_path / "adapter" / "adapter" / "adapter_model.safetensors", "pt") as adapter:
        assert any(".score." in key for key in adapter.keys())
    with pytest.raises(ValueError, match="task_type must be 'SEQ_CLS'"):
        LastTokenTrainer(
            model=str(llama_dir), args=arguments(tmp_path), train_dataset=synthetic(12, seed=1),
            processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]),
        )


def test_early_stopping_works_without_loading_the_best_model(llama_dir, tokenizer, tmp_path):
    trainer = make_trainer(llama_dir, tokenizer, tmp_path, learning_rate=0.0, head_learning_rate=0.0,
                           num_train_epochs=6, early_stopping_patience=1, load_best_model_at_end=False,
                           calibrate=False)
    trainer.train()
    assert trainer.state.epoch == 2


def test_calibration_keeps_a_user_compute_metrics(llama_dir, tokenizer, tmp_path):
    def mine(prediction):
        return {"rows": float(len(prediction.label_ids))}

    trainer = LastTokenTrainer(
        model=str(llama_dir), args=arguments(tmp_path, num_train_epochs=1, metric_for_best_model="rows"),
        train_dataset=synthetic(24, seed=1, multi_label=True), eval_dataset=synthetic(12, seed=2, multi_label=True),
        processing_class=tokenizer, compute_metrics=mine,
    )
    trainer.train()
    assert trainer.compute_metrics is mine and trainer.evaluate()["eval_rows"] == 12.0


def test_balanced_weights_when_a_class_is_in_every_row():
    multi = LabelSpace(names=("a", "b"), multi_label=True)
    assert balanced_class_weights([[1, 0], [1, 1], [1, 0]], multi) == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("family", ["llama", "gemma3"])  # its own lm_head read from the checkpoint; tied embeddings
def test_a_label_name_head_starts_from_the_lms_zero_shot_guess(tiny_lm_dirs, tokenizer, tmp_path, family):
    """head_init='label_names': before any training, the classifier's label distribution is the causal LM's own
    next-token distribution over the label names' first tokens after the suffix."""
    from transformers import AutoModelForCausalLM

    from hf_clf_ext.last_token.head_init import label_token_ids

    path = tiny_lm_dirs[family, "pad"]
    trainer = make_trainer(path, tokenizer, tmp_path, head_init="label_names", pooling_suffix=" Label:")
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    assert lm.config.tie_word_embeddings == (family == "gemma3")
    names = list(trainer.label_space.names)
    label_ids = label_token_ids(tokenizer, names)
    assert len(set(label_ids)) == len(names)
    classifier = trainer.model.eval()
    suffix = classifier.config.suffix_token_ids
    rows = trainer.prepare_dataset(synthetic(6, seed=3))
    with torch.no_grad():
        for ids in rows["input_ids"]:
            ours = classifier(input_ids=torch.tensor([ids])).logits[0]
            theirs = lm(input_ids=torch.tensor([ids + suffix])).logits[0, -1, label_ids]
            torch.testing.assert_close(ours.log_softmax(-1), theirs.log_softmax(-1), atol=1e-4, rtol=0)
    random_head = make_trainer(path, tokenizer, tmp_path / "random", pooling_suffix=" Label:").model
    assert not torch.allclose(random_head.base_model.model.score.weight, classifier.base_model.model.score.weight)
    with pytest.raises(ValueError, match="head_init must be one of"):
        arguments(tmp_path, head_init="lm_head")
    with pytest.raises(ValueError, match="pooling='mean' averages every token"):  # no next-token guess to start from
        arguments(tmp_path, head_init="label_names", pooling="mean")
    with pytest.raises(ValueError, match="already a classifier with a trained head"):  # cannot take effect
        LastTokenTrainer(model=classifier, args=arguments(tmp_path, head_init="label_names"),
                         train_dataset=synthetic(12, seed=1), processing_class=tokenizer)
