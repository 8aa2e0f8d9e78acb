"""Every decoder family transformers ships that builds tiny from its config: the classifier loads the checkpoint's
real weights (its backbone's hidden states equal the causal LM's own), pools the same logits however a text is
padded, round-trips through save/load and a Hub-layout cache, and exports to the family's stock
`*ForSequenceClassification` with the same probabilities."""

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from hf_clf_ext import LastTokenClassifierForSequenceClassification, classify_texts
from hf_clf_ext.export import export_stock

from conftest import TINY_DIMS, publish

ROPE = dict(TINY_DIMS)
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)
FAMILIES = {
    "llama": ("LlamaConfig", ROPE),
    "mistral": ("MistralConfig", dict(ROPE, sliding_window=8)),  # a window shorter than the texts
    "qwen2": ("Qwen2Config", dict(ROPE, use_sliding_window=False)),
    "qwen3": ("Qwen3Config", dict(ROPE, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(ROPE, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)),
    "gemma3_text": ("Gemma3TextConfig", dict(ROPE, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                             layer_types=["sliding_attention", "full_attention"])),
    "phi3": ("Phi3Config", ROPE),
    "stablelm": ("StableLmConfig", ROPE),
    "olmo2": ("Olmo2Config", ROPE),
    "granite": ("GraniteConfig", ROPE),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)),  # learned absolute positions
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL, intermediate_size=128)),
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "opt": ("OPTConfig", dict(SMALL, ffn_dim=128, word_embed_proj_dim=64)),
    "bloom": ("BloomConfig", dict(hidden_size=64, n_layer=2, n_head=4)),  # ALiBi
    "phi": ("PhiConfig", dict(SMALL, intermediate_size=128)),
}


@pytest.fixture(params=sorted(FAMILIES))
def family_lm(request, tokenizer, tmp_path):
    """A seeded tiny causal LM of the family, saved with the shared tokenizer."""
    name, dims = FAMILIES[request.param]
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=None)
    torch.manual_seed(0)
    causal_lm = AutoModelForCausalLM.from_config(getattr(transformers, name)(**dims, **ids)).eval()
    causal_lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    return request.param, causal_lm, tmp_path / "lm"


def test_weights_load_padding_round_trips_and_stock_export(family_lm, tokenizer, texts, tmp_path):
    family, causal_lm, path = family_lm
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        path, labels=["a", "b", "c"], tokenizer=tokenizer).eval()
    torch.nn.init.normal_(model.score.weight, std=0.5)
    assert type(model.model) is type(causal_lm.base_model)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():  # the real weights, not a random backbone
        torch.testing.assert_close(model.model(**batch).last_hidden_state,
                                   causal_lm.base_model(**batch).last_hidden_state)

        alone = torch.cat([model(**tokenizer([text], return_tensors="pt")).logits for text in texts])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            padded = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
            torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4, msg=f"{family}, {side} padding")

    expected = [list(r["probabilities"].values()) for r in classify_texts(model, tokenizer, texts)]
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    repo = publish(tmp_path / "saved", f"tiny-org/{family.replace('_', '-')}-classifier", tmp_path / "hub")
    for source, options in ((tmp_path / "saved", {}), (repo, {"cache_dir": str(tmp_path / "hub")})):
        loaded = AutoModelForSequenceClassification.from_pretrained(source, **options)
        assert type(loaded) is LastTokenClassifierForSequenceClassification
        got = [list(r["probabilities"].values()) for r in classify_texts(loaded, tokenizer, texts)]
        np.testing.assert_allclose(got, expected, atol=1e-6)

    if type(model.config.text_config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:  # granite, ...
        with pytest.raises(ValueError, match="no sequence-classification class"):
            export_stock(tmp_path / "saved", tmp_path / "stock")
        return
    architecture = export_stock(tmp_path / "saved", tmp_path / "stock")
    stock = AutoModelForSequenceClassification.from_pretrained(tmp_path / "stock").eval()
    stock_tokenizer = PreTrainedTokenizerFast.from_pretrained(tmp_path / "stock")
    assert type(stock).__name__ == architecture != type(model).__name__
    with torch.no_grad():
        got = [stock(**stock_tokenizer([text], return_tensors="pt")).logits.softmax(-1)[0].tolist() for text in texts]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_a_checkpoint_of_another_family_is_an_error_naming_the_keys(tiny_lm_dirs, tokenizer, tmp_path):
    # A Llama checkpoint labelled as GPT-2: its keys fit nothing in a GPT-2 backbone.
    llama = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"])
    llama.config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=len(tokenizer))
    llama.save_pretrained(tmp_path / "mislabelled")
    with pytest.raises(ValueError, match=r"do not match a gpt2 model: \d+ missing .*unexpected"):
        LastTokenClassifierForSequenceClassification.from_backbone(tmp_path / "mislabelled", num_labels=2)
