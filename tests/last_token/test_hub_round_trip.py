"""Every save the last-token trainer makes, published to a Hub-layout cache and loaded by repo id in a fresh, offline
process: `AutoModelForSequenceClassification` with the package imported, with `trust_remote_code=True` and without
the package, and `pipeline()`, all give the probabilities of the trained model."""

import json

import numpy as np
import pytest

from hf_clf_ext import LastTokenTrainer, classify_texts

from conftest import publish, run_fresh
from testing_utils import arguments, synthetic

BASE = "tiny-org/tiny-llama"
LONG = " ".join(["the market shares rose sharply after the bank cut interest rates"] * 20)  # past max_length

LOAD = """
import json, sys
{imports}
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
texts = json.loads({texts!r})
model = AutoModelForSequenceClassification.from_pretrained({repo!r}{remote}).eval()
tokenizer = AutoTokenizer.from_pretrained({repo!r}{remote})
probabilities = []
with torch.no_grad():
    for text in texts:
        logits = model(**tokenizer([text], truncation=True, return_tensors="pt")).logits.float()
        probabilities.append((logits.sigmoid() if {multi} else logits.softmax(-1))[0].tolist())
classify = pipeline("text-classification", model={repo!r}, top_k=None{remote})
piped = [{{r["label"]: r["score"] for r in rows}} for rows in classify(texts{truncation})]
decided = pipeline("text-classification", model={repo!r}{remote})(texts{truncation})
print("RESULT", json.dumps({{"type": type(model).__name__, "probabilities": probabilities, "pipeline": piped,
                  "decided": decided,
                  "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
                  "package_imported": "hf_clf_ext" in sys.modules}}))
"""


def load_in_fresh_process(repo, hub_cache, texts, multi_label, with_package):
    code = LOAD.format(
        imports="import torch" + ("\nimport hf_clf_ext" if with_package else ""),
        texts=json.dumps(texts), repo=repo, multi=multi_label,
        remote="" if with_package else ", trust_remote_code=True",
        # Without the package the stock pipeline runs: it truncates only when asked.
        truncation="" if with_package else ", truncation=True",
    )
    return run_fresh(code, hub_cache)


@pytest.mark.parametrize("setting", ["adapter", "multi_label", "merged", "4bit"])
def test_every_save_loads_by_repo_id_with_the_trained_probabilities(setting, tiny_lm_dirs, tokenizer, hub_cache,
                                                                     tmp_path, texts):
    publish(tiny_lm_dirs["llama", "pad"], BASE, hub_cache)
    multi_label = setting == "multi_label"
    args = arguments(tmp_path, num_train_epochs=2, eval_strategy="no", load_best_model_at_end=False,
                     merge_adapter=setting == "merged", quantization="4bit" if setting == "4bit" else "none")
    trainer = LastTokenTrainer(
        BASE, args=args, train_dataset=synthetic(24, 0, multi_label), processing_class=tokenizer,
        model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    trainer.train()
    trainer.save_model()
    texts = texts + [LONG]
    # One text per batch, as the pipeline and the fresh process run them (4-bit kernels round by batch shape).
    predicted = [classify_texts(trainer.model, tokenizer, [text])[0] for text in texts]
    expected = [list(r["probabilities"].values()) for r in predicted]
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "adapter_config.json" not in saved  # at the top it would make the Auto classes load the base alone
    assert ("adapter" in saved) == (setting != "merged")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["LastTokenClassifierForSequenceClassification"]
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_last_token.")
    assert config["base_model_name_or_path"] == BASE
    repo = publish(tmp_path / "out", "tiny-org/classifier", hub_cache)

    for with_package in (True, False):
        loaded = load_in_fresh_process(repo, hub_cache, texts, multi_label, with_package)
        assert loaded["package_imported"] is with_package
        assert loaded["type"] == "LastTokenClassifierForSequenceClassification"
        assert loaded["labels"] == list(trainer.label_space.names)
        np.testing.assert_allclose(loaded["probabilities"], expected, atol=1e-5, err_msg=f"package: {with_package}")
        piped = [[row[name] for name in loaded["labels"]] for row in loaded["pipeline"]]
        np.testing.assert_allclose(piped, expected, atol=1e-5)
        if not multi_label:
            assert [row["label"] for row in loaded["decided"]] == [r["label"] for r in predicted]
        elif with_package:  # the tuned thresholds decide, as in classify_texts
            assert [sorted(row["label"] for row in rows) for rows in loaded["decided"]] == [
                sorted(r["labels"]) for r in predicted]


def test_one_loader_predicts_by_repo_id_importing_only_what_prediction_needs(tiny_lm_dirs, tokenizer, hub_cache,
                                                                            tmp_path, texts):
    """`TextClassifier` loads a saved classifier by repo id with `classify_texts`' results, and `import hf_clf_ext`
    for prediction leaves the training stack (TRL, datasets, evaluate, scikit-learn, matplotlib) unimported. (PEFT,
    which loads the adapter, imports bitsandbytes itself where it is installed.)"""
    publish(tiny_lm_dirs["llama", "pad"], BASE, hub_cache)
    trainer = LastTokenTrainer(
        BASE, args=arguments(tmp_path, num_train_epochs=1, eval_strategy="no", load_best_model_at_end=False),
        train_dataset=synthetic(24, 0), processing_class=tokenizer, model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    trainer.train()
    trainer.save_model()
    expected = classify_texts(trainer.model, tokenizer, texts)
    repo = publish(tmp_path / "out", "tiny-org/classifier", hub_cache)
    loaded = run_fresh(f"""
        import json, sys
        from hf_clf_ext import TextClassifier
        classifier = TextClassifier.from_pretrained({repo!r})
        results = classifier.classify({texts!r})
        heavy = [name for name in ("trl", "datasets", "evaluate", "sklearn", "matplotlib")
                 if name in sys.modules]
        errors = []
        for call in (lambda: classifier.classify(["text"], method="score"),
                     lambda: TextClassifier.from_pretrained({str(tmp_path)!r})):
            try:
                call()
            except (ValueError, OSError) as error:
                errors.append(str(error))
        print("RESULT", json.dumps({{"results": results, "approach": classifier.approach, "heavy": heavy,
                                    "errors": errors}}))
    """, hub_cache)
    assert loaded["approach"] == "last_token" and loaded["heavy"] == []
    assert [r["label"] for r in loaded["results"]] == [r["label"] for r in expected]
    for got, want in zip(loaded["results"], expected):
        np.testing.assert_allclose(list(got["probabilities"].values()), list(want["probabilities"].values()),
                                   atol=1e-5)
    assert "A last_token classifier classifies with 'forward', not 'score'" in loaded["errors"][0]
    assert "not a folder or repo saved by hf-clf-ext" in loaded["errors"][1]
