"""Model cards written from training facts (labels with examples, dataset statistics, hyperparameters, metrics),
with a reliability diagram and a confusion matrix, rendered from the templates beside this module."""

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from huggingface_hub import EvalResult, ModelCard, ModelCardData  # noqa: E402
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix  # noqa: E402

from ..texts import WHITESPACE  # noqa: E402

RELIABILITY_PLOT = "reliability_diagram.png"
CONFUSION_PLOT = "confusion_matrix.png"
RESULTS_FILE = "eval_results.json"
# Metrics shown in the card's table and `model-index`, in this order, when present.
HEADLINE_METRICS = (
    ("accuracy", "Accuracy"),
    ("subset_accuracy", "Subset accuracy"),
    ("f1_macro", "F1 (macro)"),
    ("f1_micro", "F1 (micro)"),
    ("f1_weighted", "F1 (weighted)"),
    ("precision_macro", "Precision (macro)"),
    ("recall_macro", "Recall (macro)"),
    ("hamming_loss", "Hamming loss"),
    ("roc_auc", "ROC-AUC"),
    ("ece", "Expected calibration error"),
    ("brier", "Brier score"),
)


@dataclass
class EvaluationFacts:
    """What the card reports about the evaluation split."""

    metrics: dict[str, float]
    probabilities: np.ndarray | None  # None for hard predictions (constrained decoding alone)
    references: np.ndarray
    predictions: np.ndarray
    reliability: dict | None  # a reliability diagram needs probabilities
    calibration: dict | None = None
    split: str = "evaluation"  # "test": held out from training, checkpoint selection and calibration
    # Rows of a second method's metrics, beside the headline ones: the instruction trainer's label scoring when
    # constrained decoding is the headline. Kept with the evaluation, so that one object caches what the card shows.
    secondary_metrics: list[tuple[str, str]] | None = None


@dataclass
class CardFacts:
    model_name: str
    base_model: str
    label_names: Sequence[str]
    multi_label: bool
    train_labels: Sequence  # class ids or multi-hot rows
    train_texts: Sequence[str]
    split_lengths: dict[str, list[int]]
    max_length: int
    hyperparameters: dict[str, object]
    trainable_parameters: int
    total_parameters: int
    quantization: str = "none"
    quantization_detail: str = ""
    pooling_suffix: str | None = None
    adaptation: str = "LoRA"
    dataset_name: str | None = None
    tags: Sequence[str] = field(default_factory=list)
    evaluation: EvaluationFacts | None = None
    extra: dict = field(default_factory=dict)  # template-specific variables
    split_truncated: dict[str, int] | None = None  # rows cut to max_length; default: rows that reach it
    label_counts: Sequence[int] | None = None  # streamed training: rows per label, counted as trained on
    label_examples: dict[int, str] | None = None  # streamed training: one text per label


def template_path(name: str) -> Path:
    """`hf_clf_ext/cards/<name>.md`, beside this module (package data in a wheel)."""
    return Path(__file__).with_name(f"{name}.md")


def write_model_card(facts: CardFacts, output_dir: str | os.PathLike, template: str = "last_token") -> ModelCard:
    """Write README.md, the plots and `eval_results.json` into `output_dir`; return the card."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    evaluation = facts.evaluation
    if evaluation is not None:
        if evaluation.reliability is not None:
            plot_reliability(evaluation.reliability, output_dir / RELIABILITY_PLOT, multi_label=facts.multi_label)
            plots.append({"title": "Reliability diagram", "file": RELIABILITY_PLOT})
        plot_confusion(evaluation.references, evaluation.predictions, facts.label_names, facts.multi_label,
                       output_dir / CONFUSION_PLOT)
        plots.append({"title": "Confusion matrix", "file": CONFUSION_PLOT})
        results = {"metrics": evaluation.metrics, "calibration": evaluation.calibration}
        (output_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=float))
    card = ModelCard.from_template(
        _card_data(facts),
        template_path=str(template_path(template)),
        **_template_variables(facts, plots),
    )
    card.save(output_dir / "README.md")
    return card


def _card_data(facts: CardFacts) -> ModelCardData:
    eval_results = None
    if facts.evaluation is not None:
        dataset = facts.dataset_name or "custom"
        eval_results = [
            EvalResult(
                task_type="text-classification",
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=key,
                metric_name=name,
                metric_value=round(float(facts.evaluation.metrics[key]), 4),
            )
            for key, name in HEADLINE_METRICS
            if _is_number(facts.evaluation.metrics.get(key))
        ]
    return ModelCardData(
        model_name=facts.model_name,
        base_model=facts.base_model if _is_hub_id(facts.base_model) else None,
        library_name=facts.extra.get("library_name", "transformers"),
        pipeline_tag="text-classification",
        tags=["hf-clf-ext", "text-classification", *facts.extra.get("kind_tags", ["last-token-classifier"]),
              *facts.tags],
        # Only names that can be Hub dataset ids ("imdb", "org/name"); a description stays in the text.
        datasets=[facts.dataset_name] if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", facts.dataset_name or "") else None,
        eval_results=eval_results or None,
    )


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") == 1


def _template_variables(facts: CardFacts, plots: list[dict]) -> dict:
    from importlib.metadata import version

    names = list(facts.label_names)
    counts = np.zeros(len(names), dtype=int) if facts.label_counts is None else np.asarray(facts.label_counts)
    examples = {i: _one_line(text) for i, text in (facts.label_examples or {}).items()}
    for text, label in zip(facts.train_texts, facts.train_labels):
        ids = np.flatnonzero(np.asarray(label)) if facts.multi_label else [int(label)]
        for i in ids:
            counts[i] += 1
            examples.setdefault(int(i), _one_line(text))
    evaluation = facts.evaluation
    calibration = None
    if evaluation is not None and evaluation.calibration:
        c = evaluation.calibration
        calibration = {
            "temperature": f"{c['temperature']:.3f}",
            "ece_before": _fmt(c.get("ece_before")),
            "ece_after": _fmt(c.get("ece_after")),
            "thresholds": ", ".join(f"{n} {t:.2f}" for n, t in zip(names, c["decision_thresholds"]))
            if c.get("decision_thresholds") else None,
        }
    total = max(facts.total_parameters, 1)
    return {
        "model_name": facts.model_name,
        "repo_id": facts.model_name,
        "base_model": facts.base_model,
        "pooling_suffix": facts.pooling_suffix,
        "adaptation": facts.adaptation,
        "task_kind": "multi-label" if facts.multi_label else "single-label",
        "labels": [
            {"name": name, "count": int(counts[i]), "example": examples.get(i, "(none)")}
            for i, name in enumerate(names)
        ],
        "metrics": metric_rows(evaluation.metrics) if evaluation is not None else [],
        "eval_rows": len(evaluation.references) if evaluation is not None else 0,
        "eval_split": evaluation.split if evaluation is not None else None,
        "dataset_name": facts.dataset_name,
        "calibration": calibration,
        "plots": plots,
        "max_length": facts.max_length,
        "splits": [
            {
                "name": split,
                "rows": len(lengths),
                "lengths": f"{min(lengths)} / {int(np.median(lengths))} / {max(lengths)}" if lengths else "-",
                "truncated": (facts.split_truncated or {}).get(
                    split, sum(length >= facts.max_length for length in lengths)
                ),
            }
            for split, lengths in facts.split_lengths.items()
        ],
        "quantization": facts.quantization,
        "quantization_detail": facts.quantization_detail,
        "trainable_parameters": f"{facts.trainable_parameters:,}",
        "total_parameters": f"{facts.total_parameters:,}",
        "trainable_percent": f"{100 * facts.trainable_parameters / total:.2f}%",
        "hyperparameters": [(name, _fmt(value)) for name, value in facts.hyperparameters.items()],
        "usage_example": next(iter(examples.values()), "Some text to classify.")[:80],
        "versions": ", ".join(
            f"{package} {version(package)}" for package in ("hf-clf-ext", "transformers", "peft", "torch", "datasets")
        ),
        **facts.extra,
    }


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting a PEFT model's base weights the way PEFT reports them."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


def lora_rows(model) -> dict[str, str]:
    """Card hyperparameter rows describing a PEFT model's active LoRA adapter (none for other models)."""
    if not hasattr(model, "peft_config"):
        return {}
    lora = model.peft_config[model.active_adapter]
    targets = lora.target_modules
    return {
        "LoRA r / alpha / dropout": f"{lora.r} / {lora.lora_alpha} / {lora.lora_dropout}",
        "LoRA targets": targets if isinstance(targets, str) else ", ".join(sorted(targets)),
    }


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """(display name, formatted value) of the headline metrics present in `metrics`, in a fixed order."""
    return [(name, _fmt(metrics[key])) for key, name in HEADLINE_METRICS if _is_number(metrics.get(key))]


def plot_reliability(reliability: dict, path: Path, *, multi_label: bool) -> None:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    edges = np.asarray(reliability["bin_edges"], dtype=float)
    accuracy = np.array([np.nan if a is None else a for a in reliability["bin_accuracy"]], dtype=float)
    confidence = np.array([np.nan if c is None else c for c in reliability["bin_confidence"]], dtype=float)
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.bar(centers, np.nan_to_num(accuracy), width=widths, edgecolor="black", alpha=0.7, label="accuracy")
    axis.plot(confidence, accuracy, "o", color="tab:red", markersize=4, label="bin (mean confidence, accuracy)")
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
             title="Reliability (label decisions)" if multi_label else "Reliability (top-1)")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_confusion(references, predictions, names: Sequence[str], multi_label: bool, path: Path) -> None:
    """Row-normalised confusion matrix (single-label) or one 2x2 matrix per label (multi-label), with counts."""
    names = list(names)
    if multi_label:
        matrices = multilabel_confusion_matrix(np.asarray(references), np.asarray(predictions))
        columns = min(4, len(names))
        rows = int(np.ceil(len(names) / columns))
        figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
        for axis, name, matrix in zip(axes.flat, names, matrices):
            _heatmap(axis, matrix, ["no", "yes"], title=name)
        for axis in list(axes.flat)[len(names):]:
            axis.axis("off")
    else:
        matrix = confusion_matrix(np.asarray(references), np.asarray(predictions), labels=range(len(names)))
        size = max(4.0, 0.6 * len(names) + 2)
        figure, axis = plt.subplots(figsize=(size, size))
        _heatmap(axis, matrix, names, title="Confusion matrix")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _heatmap(axis, matrix: np.ndarray, ticks: list[str], title: str) -> None:
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        axis.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    axis.set_xticks(range(len(ticks)), ticks, rotation=45, ha="right")
    axis.set_yticks(range(len(ticks)), ticks)
    axis.set(xlabel="predicted", ylabel="true", title=title)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.floating)) and np.isfinite(value)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|").replace("\n", "\\n")


def _one_line(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    line = line if len(line) <= limit else line[: limit - 1] + "…"
    return line.replace("|", "\\|")


# Runs this ONNX folder without hf-clf-ext or torch; tests/test_onnx.py runs it as it stands in the card.
ONNX_SNIPPET = """import json

import numpy as np
import onnxruntime
from tokenizers import Tokenizer

folder = "{folder}"
facts = json.load(open(f"{{folder}}/onnx.json"))
tokenizer = Tokenizer.from_file(f"{{folder}}/tokenizer.json")  # strips white space, appends the pooling suffix
tokenizer.enable_truncation(facts["max_length"], direction=facts["truncation_side"])  # keep training's part
tokenizer.enable_padding(pad_id=facts["pad_token_id"], direction="right")
session = onnxruntime.InferenceSession(f"{{folder}}/model.onnx")
{white_space}

def probabilities(texts):
    encodings = tokenizer.encode_batch({texts})
    feed = {{"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}}
    logits = session.run(["logits"], feed)[0].astype(np.float64)
    if facts["activation"] == "sigmoid":  # multi-label
        return 1 / (1 + np.exp(-logits))
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


print(dict(zip(facts["labels"], probabilities(["Shares rose after the results."])[0].round(3))))"""


# For tokenizers that cannot strip (`texts.strips_whole_texts`): the card's code strips what the package strips,
# Unicode's White_Space; a bare `str.strip()` would also strip U+001C..U+001F, which the package keeps.
STRIP_SET = f"WHITE_SPACE = {WHITESPACE!r}  # Unicode White_Space, as hf-clf-ext strips (not str.strip()'s set)\n"


def onnx_card(facts: dict, folder: str | os.PathLike) -> str:
    """The README.md of the ONNX export in `folder` (`hf_clf_ext.export.export_onnx`), from its `onnx.json` facts."""
    folder = str(folder)
    multi_label = facts["activation"] == "sigmoid"
    strips_texts = facts.get("strips_texts", True)
    data = ModelCardData(library_name="onnx", pipeline_tag="text-classification",
                         tags=["text-classification", "onnx", "hf-clf-ext",
                               *(["int8"] if facts["quantization"] else [])])
    card = ModelCard.from_template(
        data, template_path=str(template_path("onnx")), model_name=os.path.basename(os.path.normpath(folder)),
        folder=folder, exported_from=facts["exported_from"],
        architecture=facts["architecture"], task_kind="multi-label" if multi_label else "single-label",
        labels=facts["labels"], quantization=facts["quantization"], max_length=facts["max_length"],
        truncation_side=facts.get("truncation_side", "right"),
        strips_texts=strips_texts, thresholds=facts["decision_thresholds"] if multi_label else None,
        snippet=ONNX_SNIPPET.format(folder=folder, white_space="" if strips_texts else STRIP_SET,
                                    texts="texts" if strips_texts else "[text.strip(WHITE_SPACE) for text in texts]"))
    return str(card)
