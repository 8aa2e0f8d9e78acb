"""Folders the package wrote before (tests/fixtures/saved_kinds, made by tests/fixtures/make_saved_kinds.py: an
adapter + head whose base is a Hub repo, merged, stock export, TF-IDF student, instruction classifier) load with
today's code and predict what they predicted when they were written; the adapter also by repo id, in a fresh
process, through plain transformers."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hf_clf_ext import TextClassifier

from conftest import publish, run_fresh

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_kinds"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
KINDS = list(EXPECTED["results"])


@pytest.fixture
def base_hub(hub_cache):
    publish(FIXTURES / "base", EXPECTED["base_repo"], hub_cache)
    return hub_cache


def table(results, labels):
    return np.array([[r["probabilities"][n] for n in labels] for r in results])


@pytest.mark.parametrize("kind", KINDS)
def test_a_saved_folder_of_the_old_layout_loads_and_predicts_as_it_did(kind, base_hub, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(FIXTURES / kind, folder)  # a copy: nothing may be written next to the fixture
    options = {"cache_dir": str(base_hub)} if kind == "adapter" else {}
    classifier = TextClassifier.from_pretrained(folder, **options)
    expected = EXPECTED["results"][kind]
    method = "score" if kind == "instruction" else None
    got = classifier.classify(EXPECTED["texts"], method=method)
    labels = list(expected[0]["probabilities"])
    assert classifier.labels == labels
    np.testing.assert_allclose(table(got, labels), table(expected, labels), atol=1e-5)
    assert [r["label"] for r in got] == [r["label"] for r in expected]


def test_the_old_adapter_loads_by_repo_id_without_the_package(base_hub):
    repo = publish(FIXTURES / "adapter", "tiny-org/saved-kinds-classifier", base_hub)
    code = f"""
import json, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({repo!r}, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained({repo!r}, trust_remote_code=True)
texts = json.loads({json.dumps(EXPECTED["texts"])!r})
with torch.no_grad():
    rows = [model(**tokenizer([t.strip()], truncation=True, return_tensors="pt")).logits.softmax(-1)[0].tolist()
            for t in texts]
print("RESULT", json.dumps(rows))
"""
    expected = EXPECTED["results"]["adapter"]
    np.testing.assert_allclose(run_fresh(code, base_hub), table(expected, list(expected[0]["probabilities"])),
                               atol=1e-5)
