"""The local `evaluate` modules and `build_compute_metrics`, against hand-computed values and scikit-learn."""

import math
import socket

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score, roc_auc_score
from transformers import EvalPrediction

from hf_clf_ext.metrics import METRICS_DIR, build_compute_metrics, load_metric, probabilities_from_logits

# refs/preds of a 3-class example. Per class (TP, FP, FN): 0 -> (1, 1, 1), 1 -> (2, 1, 0), 2 -> (1, 0, 1),
# so F1 = 1/2, 4/5, 2/3; precision = 1/2, 2/3, 1; recall = 1/2, 1, 1/2; 4 of 6 correct.
REFS = [0, 0, 1, 1, 2, 2]
PREDS = [0, 1, 1, 1, 2, 0]
NAMES = ["neg", "neu", "pos"]


@pytest.fixture(scope="module")
def single():
    return load_metric("classification", "single_label")


@pytest.fixture(scope="module")
def multi():
    return load_metric("classification", "multi_label")


@pytest.fixture(scope="module")
def calibration_single():
    return load_metric("calibration", "single_label")


@pytest.fixture(scope="module")
def calibration_multi():
    return load_metric("calibration", "multi_label")


def test_single_label_matches_hand_computed_scores(single):
    result = single.compute(predictions=PREDS, references=REFS, label_names=NAMES)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["f1_micro"] == pytest.approx(2 / 3)
    assert result["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)  # 59/90
    assert result["f1_weighted"] == pytest.approx(59 / 90)  # equal supports: weighted == macro
    assert result["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert result["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert result["f1_per_class"] == pytest.approx([1 / 2, 4 / 5, 2 / 3])
    assert (result["f1_neg"], result["f1_neu"], result["f1_pos"]) == pytest.approx((1 / 2, 4 / 5, 2 / 3))


def test_absent_class_counts_towards_macro_average_when_num_labels_given(single):
    without = single.compute(predictions=PREDS, references=REFS)
    with_absent = single.compute(predictions=PREDS, references=REFS, num_labels=4)
    assert without["f1_macro"] == pytest.approx(59 / 90)
    assert with_absent["f1_macro"] == pytest.approx(59 / 90 * 3 / 4)
    assert with_absent["f1_per_class"] == pytest.approx([1 / 2, 4 / 5, 2 / 3, 0.0])
    by_names = single.compute(predictions=PREDS, references=REFS, label_names=[*NAMES, "unused"])
    assert by_names["f1_unused"] == 0.0
    assert by_names["f1_macro"] == pytest.approx(with_absent["f1_macro"])


def test_single_label_matches_sklearn_on_random_data(single):
    rng = np.random.default_rng(0)
    refs, preds = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    result = single.compute(predictions=preds, references=refs, num_labels=5)
    assert result["accuracy"] == pytest.approx(accuracy_score(refs, preds))
    for average in ("micro", "macro", "weighted"):
        assert result[f"f1_{average}"] == pytest.approx(f1_score(refs, preds, average=average))
        assert result[f"precision_{average}"] == pytest.approx(precision_score(refs, preds, average=average))
        assert result[f"recall_{average}"] == pytest.approx(recall_score(refs, preds, average=average))
    assert result["f1_per_class"] == pytest.approx(f1_score(refs, preds, average=None).tolist())


def test_multi_label_subset_accuracy_and_hamming_loss(multi):
    refs = [[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1]]
    preds = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    result = multi.compute(predictions=preds, references=refs, label_names=["a", "b", "c"])
    assert result["subset_accuracy"] == result["accuracy"] == 0.5  # rows 0 and 3 match exactly
    assert result["hamming_loss"] == pytest.approx(2 / 12)
    assert result["f1_micro"] == pytest.approx(10 / 12)  # TP 5, FP 1, FN 1
    assert [result["f1_a"], result["f1_b"], result["f1_c"]] == pytest.approx([1.0, 2 / 3, 4 / 5])
    assert result["hamming_loss"] == pytest.approx(hamming_loss(np.array(refs), np.array(preds)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(predictions=[0, 3], references=[0, 1], num_labels=3), "out of range"),
        (dict(predictions=[0, 1], references=[0, 1], label_names=["a", "micro"]), "clash"),
        (dict(predictions=[0, 1], references=[0, 1], num_labels=3, label_names=["a", "b"]), "label_names"),
        (dict(predictions=[], references=[]), "No examples"),
    ],
)
def test_single_label_rejects_bad_input(single, kwargs, match):
    with pytest.raises(ValueError, match=match):
        single.compute(**kwargs)


def test_multi_label_rejects_non_binary_vectors(multi):
    with pytest.raises(ValueError, match="multi-hot"):
        multi.compute(predictions=[[2, 0]], references=[[1, 0]])


def test_unknown_config_and_metric_names_are_rejected():
    with pytest.raises(ValueError, match="config_name"):
        load_metric("classification", "multilabel")
    with pytest.raises(ValueError, match="bundled metrics"):
        load_metric("f1")


# Top-1 confidences / correct: 0.4 yes, 0.45 no | 0.8 yes, 0.7 no, 0.9 yes. With 2 bins:
# (0, .5]: confidence .425, accuracy .5; (.5, 1]: confidence .8, accuracy 2/3 -> ECE = 2/5 * .075 + 3/5 * 2/15 = .11.
CAL_PROBS = [
    [0.4, 0.3, 0.2, 0.1],
    [0.1, 0.45, 0.25, 0.2],
    [0.8, 0.1, 0.05, 0.05],
    [0.1, 0.1, 0.1, 0.7],
    [0.05, 0.9, 0.03, 0.02],
]
CAL_REFS = [0, 2, 0, 1, 1]


def test_single_label_ece_brier_and_reliability_by_hand(calibration_single):
    result = calibration_single.compute(probabilities=CAL_PROBS, references=CAL_REFS, n_bins=2)
    assert result["ece"] == pytest.approx(0.11)
    # Per example sum of squared errors: .5, .815, .055, 1.32, .0138.
    assert result["brier"] == pytest.approx(2.7038 / 5)
    reliability = result["reliability"]
    assert reliability["bin_edges"] == [0.0, 0.5, 1.0]
    assert reliability["bin_count"] == [2, 3]
    assert reliability["bin_confidence"] == pytest.approx([0.425, 0.8])
    assert reliability["bin_accuracy"] == pytest.approx([0.5, 2 / 3])


def test_default_bins_and_empty_bins(calibration_single):
    reliability = calibration_single.compute(probabilities=CAL_PROBS, references=CAL_REFS)["reliability"]
    assert len(reliability["bin_edges"]) == 16 and sum(reliability["bin_count"]) == 5
    assert reliability["bin_confidence"][0] is None and reliability["bin_accuracy"][0] is None


def test_roc_auc_skips_absent_class(calibration_single):
    """Class 3 never occurs in CAL_REFS, so the macro AUC is over classes 0-2 only."""
    result = calibration_single.compute(probabilities=CAL_PROBS, references=CAL_REFS)
    probs, onehot = np.array(CAL_PROBS), np.eye(4)[CAL_REFS]
    expected = np.mean([roc_auc_score(onehot[:, c], probs[:, c]) for c in range(3)])
    assert result["roc_auc"] == pytest.approx(expected)


def test_roc_auc_is_none_when_no_class_has_both_outcomes(calibration_single):
    result = calibration_single.compute(probabilities=[[0.7, 0.3], [0.6, 0.4]], references=[0, 0])
    assert result["roc_auc"] is None
    assert result["brier"] == pytest.approx((0.09 * 2 + 0.16 * 2) / 2)


def test_single_label_roc_auc_matches_sklearn_ovr(calibration_single):
    rng = np.random.default_rng(1)
    probs = probabilities_from_logits(rng.normal(size=(200, 4)), "single_label_classification")
    refs = rng.integers(0, 4, 200)
    result = calibration_single.compute(probabilities=probs, references=refs)
    expected = roc_auc_score(refs, probs, multi_class="ovr", average="macro", labels=[0, 1, 2, 3])
    assert result["roc_auc"] == pytest.approx(expected)


def test_multi_label_calibration_by_hand(calibration_multi):
    # Pairs (confidence, correct): (.9, yes), (.8, yes), (.6, no), (.7, yes). With 4 bins:
    # (.5, .75]: confidence .65, accuracy .5; (.75, 1]: confidence .85, accuracy 1 -> ECE = .5 * .15 + .5 * .15.
    result = calibration_multi.compute(probabilities=[[0.9, 0.2], [0.6, 0.3]], references=[[1, 0], [0, 0]], n_bins=4)
    assert result["ece"] == pytest.approx(0.15)
    assert result["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.09) / 4)
    assert result["roc_auc"] == 1.0  # label 1 has no positives and is skipped
    assert result["reliability"]["bin_count"] == [0, 0, 2, 2]


def test_calibration_rejects_unnormalized_single_label_rows(calibration_single):
    with pytest.raises(ValueError, match="sum to 1"):
        calibration_single.compute(probabilities=[[0.9, 0.9]], references=[0])


def test_probabilities_from_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    softmax = probabilities_from_logits(logits, "single_label_classification", temperature=2.0)
    assert np.isfinite(softmax).all() and softmax.sum(axis=1) == pytest.approx([1.0, 1.0])
    expected = np.exp([0.5, 1.0, 1.5]) / np.exp([0.5, 1.0, 1.5]).sum()
    assert softmax[1] == pytest.approx(expected)
    sigmoid = probabilities_from_logits(logits, "multi_label_classification")
    assert sigmoid[0] == pytest.approx([1.0, 0.5, 0.0])
    assert sigmoid[1] == pytest.approx(1 / (1 + np.exp(-logits[1])))
    with pytest.raises(ValueError, match="problem_type"):
        probabilities_from_logits(logits, "regression")


def test_compute_metrics_single_label_matches_sklearn():
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(120, 3)), rng.integers(0, 3, 120)
    compute_metrics = build_compute_metrics("single_label_classification", {"0": "neg", "1": "neu", "2": "pos"})
    result = compute_metrics(EvalPrediction(predictions=(logits, np.zeros((120, 8))), label_ids=labels))
    preds = logits.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert result["f1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert [result["f1_neg"], result["f1_neu"], result["f1_pos"]] == pytest.approx(
        f1_score(labels, preds, average=None).tolist()
    )
    probs = probabilities_from_logits(logits, "single_label_classification")
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    assert result["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(3)[labels]) ** 2, axis=1)))
    assert "subset_accuracy" not in result and "f1_per_class" not in result
    assert all(isinstance(value, float) for value in result.values())


def test_compute_metrics_multi_label_with_per_class_thresholds():
    # Sigmoid probabilities of logits 1, 0.5, -1: 0.731, 0.622, 0.269.
    logits = np.array([[1.0, 0.5], [0.5, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    labels = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    compute_metrics = build_compute_metrics("multi_label_classification", {0: "x", 1: "y"}, threshold=[0.5, 0.7])
    result = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    # x: predicted for rows 0, 1, 3 (p >= .5), all right. y: only p = .731 >= .7 (rows 2, 3), all right.
    assert result["f1_x"] == result["f1_y"] == result["subset_accuracy"] == 1.0
    assert result["hamming_loss"] == 0.0
    looser = build_compute_metrics("multi_label_classification", {0: "x", 1: "y"}, threshold=0.5)
    result = looser(EvalPrediction(predictions=logits, label_ids=labels))
    assert result["f1_y"] == pytest.approx(2 * 2 / (2 * 2 + 1))  # row 0 (p = .622) becomes a false positive
    assert result["subset_accuracy"] == 0.75 and result["hamming_loss"] == pytest.approx(1 / 8)
    assert result["roc_auc"] == 1.0 and math.isfinite(result["ece"])


def test_compute_metrics_reports_nan_auc_when_undefined():
    compute_metrics = build_compute_metrics("multi_label_classification", {0: "x", 1: "y"})
    result = compute_metrics(EvalPrediction(predictions=np.zeros((2, 2)), label_ids=np.ones((2, 2))))
    assert math.isnan(result["roc_auc"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(problem_type="regression", id2label={0: "a"}), "problem_type"),
        (dict(problem_type="multi_label_classification", id2label={0: "a", 2: "b"}), "id2label"),
        (dict(problem_type="multi_label_classification", id2label={0: "a", 1: "b"}, threshold=[0.5]), "one per"),
        (dict(problem_type="single_label_classification", id2label={0: "macro", 1: "b"}), "overwrite"),
    ],
)
def test_build_compute_metrics_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_compute_metrics(**kwargs)


def test_compute_metrics_rejects_wrong_logit_width_and_soft_labels():
    compute_metrics = build_compute_metrics("multi_label_classification", {0: "x", 1: "y"})
    with pytest.raises(ValueError, match="3 classes"):
        compute_metrics(EvalPrediction(predictions=np.zeros((2, 3)), label_ids=np.ones((2, 3))))
    with pytest.raises(ValueError, match="soft labels"):
        compute_metrics(EvalPrediction(predictions=np.zeros((1, 2)), label_ids=np.array([[0.9, 0.1]])))


def test_loading_is_offline(monkeypatch):
    """Loading by absolute path must neither need nor try the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("evaluate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    for name in ("classification", "calibration"):
        assert (METRICS_DIR / name / f"{name}.py").is_file()
        for config_name in ("single_label", "multi_label"):
            assert load_metric(name, config_name).config_name == config_name
    compute_metrics = build_compute_metrics("single_label_classification", {0: "a", 1: "b"})
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1])))["accuracy"] == 1.0


@pytest.mark.parametrize("multi_label", [False, True])
def test_metrics_from_results_match_the_trainers_metrics_on_the_same_probabilities(multi_label):
    """Results of `classify` (named labels + probabilities) score exactly like the logits they came from."""
    from hf_clf_ext.metrics import metrics_from_results

    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    logits = rng.normal(size=(40, 3)) * 3
    problem = "multi_label_classification" if multi_label else "single_label_classification"
    probabilities = probabilities_from_logits(logits, problem)
    if multi_label:
        references = (rng.random((40, 3)) < probabilities).astype(float)
        results = [{"labels": [n for n, q in zip(names, p) if q >= 0.5], "probabilities": dict(zip(names, p))}
                   for p in probabilities]
    else:
        references = np.array([rng.choice(3, p=p) for p in probabilities])
        results = [{"label": names[int(p.argmax())], "score": float(p.max()), "probabilities": dict(zip(names, p))}
                   for p in probabilities]
    expected = build_compute_metrics(problem, dict(enumerate(names)))(EvalPrediction(logits, references))
    got = metrics_from_results(results, references, problem, dict(enumerate(names)))
    assert expected["f1_macro"] > 0.3
    for key in ("accuracy", "f1_macro", "f1_micro", "ece", "brier", "roc_auc"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_headline_reads_one_set_of_keys_across_approaches():
    from hf_clf_ext.instruction import METHODS
    from hf_clf_ext.metrics import headline

    last_token = {"test_f1_macro": 0.9, "test_ece": 0.05}
    instruction = {"test_f1_macro_generate": 0.8, "test_f1_macro_score": 0.7, "test_ece_score": 0.1}
    assert (headline(last_token, "test_f1_macro"), headline(last_token, "test_ece")) == (0.9, 0.05)
    assert headline(instruction, "test_f1_macro", METHODS) == 0.8  # the default method first
    assert headline(instruction, "test_ece", METHODS) == 0.1  # decoding gives no probabilities: scoring's
    assert headline(instruction, "test_brier", METHODS) is None
