"""Model cards written from training facts, and the Hub upload (the Hub client replaced at its network boundary)."""

import json
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from hf_clf_ext import LastTokenTrainer
from hf_clf_ext.cards.model_card import CONFUSION_PLOT, RELIABILITY_PLOT, RESULTS_FILE

from testing_utils import arguments, synthetic


@pytest.fixture(scope="module")
def trained(tiny_lm_dirs, tokenizer_dirs, tmp_path_factory):
    """One briefly trained single-label and one multi-label trainer, shared by the tests here."""
    from transformers import PreTrainedTokenizerFast

    trainers = {}
    for kind, multi in (("single", False), ("multi", True)):
        tmp = tmp_path_factory.mktemp(f"card_{kind}")
        trainer = LastTokenTrainer(
            model=str(tiny_lm_dirs["llama", "pad"]),
            args=arguments(tmp, num_train_epochs=2, metric_for_best_model="f1_micro" if multi else "f1_macro"),
            train_dataset=synthetic(60, seed=1, multi_label=multi),
            eval_dataset=synthetic(30, seed=2, multi_label=multi),
            processing_class=PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"]),
        )
        trainer.train()
        trainers[kind] = trainer
    return trainers


def test_single_label_card_reports_the_training_facts(trained):
    trainer = trained["single"]
    output_dir = trainer.args.output_dir
    trainer.create_model_card(model_name="topic-classifier", dataset_name="synthetic-topics")
    card = ModelCard.load(f"{output_dir}/README.md")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-classification" and data["library_name"] == "transformers"
    assert data["datasets"] == ["synthetic-topics"]
    results = {m["type"]: m["value"] for r in data["model-index"][0]["results"] for m in r["metrics"]}
    metrics = trainer.evaluate()
    assert results["f1_macro"] == pytest.approx(metrics["eval_f1_macro"], abs=1e-4)
    assert results["ece"] == pytest.approx(metrics["eval_ece"], abs=1e-4)

    text = card.text
    counts = {name: sum(1 for label in trainer.train_dataset["labels"] if label == i)
              for i, name in enumerate(trainer.label_space.names)}
    for name, count in counts.items():
        assert f"| {name} | {count} |" in text
    assert "market" in text and "striker" in text and "film" in text  # an example per label
    trainable, total = trainer.model.get_nb_trainable_parameters()
    assert f"{trainable:,} of {total:,}" in text
    assert "| learning rate (head) | 0.0100 |" in text
    assert f"T = {trainer.calibration_results['temperature']:.3f}" in text
    assert f"![Reliability diagram]({RELIABILITY_PLOT})" in text and f"![Confusion matrix]({CONFUSION_PLOT})" in text

    for plot in (RELIABILITY_PLOT, CONFUSION_PLOT):
        with Image.open(f"{output_dir}/{plot}") as image:
            assert image.format == "PNG" and image.size[0] > 200
    saved = json.loads(open(f"{output_dir}/{RESULTS_FILE}").read())
    assert saved["calibration"]["temperature"] == trainer.calibration_results["temperature"]
    assert saved["metrics"]["f1_macro"] == pytest.approx(metrics["eval_f1_macro"], abs=1e-6)


def test_multi_label_card_reports_thresholds(trained):
    trainer = trained["multi"]
    trainer.create_model_card()
    text = ModelCard.load(f"{trainer.args.output_dir}/README.md").text
    assert "multi-label" in text and "Decision thresholds (per label)" in text
    assert "Subset accuracy" in text and "Hamming loss" in text
    with Image.open(f"{trainer.args.output_dir}/{CONFUSION_PLOT}") as image:
        assert image.format == "PNG"


def test_push_to_hub_uploads_model_card_plots_and_metrics(trained, monkeypatch):
    trainer = trained["single"]
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["created"] = repo_id
        return SimpleNamespace(repo_id=f"someone/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from pathlib import Path

        calls["uploaded"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))
        return SimpleNamespace(commit_url="https://example.invalid/commit")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    trainer.hub_model_id = None
    trainer.push_to_hub(model_name="topic-classifier", dataset_name="synthetic-topics")
    repo_id, files = calls["uploaded"]
    assert repo_id == f"someone/{calls['created']}"
    expected = {"README.md", "model.safetensors", "config.json",
                "modeling_last_token.py", "configuration_last_token.py", "tokenizer.json", RELIABILITY_PLOT,
                CONFUSION_PLOT, RESULTS_FILE}
    assert expected <= set(files), set(files) ^ expected


def test_card_after_a_merged_save_still_describes_the_lora_training(trained, tmp_path):
    trainer = trained["single"]
    before = trainer.card_facts()
    trainer.save_merged(str(tmp_path / "merged"))
    after = trainer.card_facts()
    assert after.adaptation == before.adaptation == "LoRA"
    assert after.trainable_parameters == before.trainable_parameters
    assert after.hyperparameters["LoRA r / alpha / dropout"] == "8 / 16 / 0.05"


def test_card_names_the_precision_training_ran_in(trained, monkeypatch):
    """A config's `bf16: true` trains under bf16 autocast on one CPU and in float32 on another (turned off where bf16
    is not native), with different results: the card says which ran."""
    trainer = trained["single"]
    assert trainer.card_facts().hyperparameters["mixed precision"] == "none"
    monkeypatch.setattr(trainer.args, "bf16", True)
    assert trainer.card_facts().hyperparameters["mixed precision"] == "bf16 autocast"
