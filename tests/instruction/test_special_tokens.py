"""Tokenizers that add special tokens at the start, the end or both: training cuts texts exactly as inference does
(`tokenizer(text, truncation=True)` in `classify_texts` and `pipeline()`), keeping what the tokenizer adds."""

import pytest
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from hf_clf_ext import LastTokenTrainer
from hf_clf_ext.texts import tokenize_texts

from conftest import _train_tokenizer
from testing_utils import arguments, synthetic

TEMPLATES = {"start": "<unk> $A", "end": "$A <eos>", "both": "<unk> $A <eos>"}
LONG = " ".join(["the market shares rose sharply after the bank cut interest rates"] * 10)


def tokenizer_adding(where: str) -> PreTrainedTokenizerFast:
    raw = _train_tokenizer()
    raw.post_processor = processors.TemplateProcessing(
        single=TEMPLATES[where], special_tokens=[(t, raw.token_to_id(t)) for t in ("<unk>", "<eos>")])
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("where", list(TEMPLATES))
@pytest.mark.parametrize("side", ["right", "left"])
def test_training_tokens_equal_inference_tokens(where, side):
    tokenizer = tokenizer_adding(where)
    texts = ["the bank cut rates", LONG]
    encoded, truncated = tokenize_texts(texts, tokenizer, 20, truncation_side=side, reserve=3)
    tokenizer.model_max_length, tokenizer.truncation_side = 17, side  # what the trainer sets for inference
    assert encoded["input_ids"] == tokenizer(texts, truncation=True)["input_ids"]
    assert truncated == 1 and len(encoded["input_ids"][1]) == 17
    eos, unk = tokenizer.eos_token_id, tokenizer.unk_token_id
    for ids in encoded["input_ids"]:
        assert (ids[0] == unk) == (where in ("start", "both")) and (ids[-1] == eos) == (where in ("end", "both"))


def test_the_trainer_feeds_the_tokens_classify_texts_feeds(tiny_lm_dirs, tmp_path):
    tokenizer = tokenizer_adding("both")
    trainer = LastTokenTrainer(
        str(tiny_lm_dirs["llama", "pad"]), args=arguments(tmp_path, max_length=20, eval_strategy="no",
                                                          load_best_model_at_end=False, calibrate=False),
        train_dataset=synthetic(12, 0).add_item({"text": LONG, "label": "business"}), processing_class=tokenizer)
    inference = tokenizer(trainer.train_texts, truncation=True)["input_ids"]
    assert trainer.train_dataset["input_ids"] == inference
    assert max(len(ids) for ids in inference) == 20 - len(trainer.model.config.suffix_token_ids)
