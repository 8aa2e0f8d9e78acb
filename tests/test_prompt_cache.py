"""SharedPrefix: prompts that share their opening give, through the shared cache, what each gives alone; constrained
decoding answers the same with and without it."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer
from hf_clf_ext.prompt_cache import SharedPrefix

OPENING = "Classify the text into one of these labels: business, sport, tech.\n\nText:"
TEXTS = [" shares rose", " the striker scored twice in the final match and the crowd sang", " phones sold well!"]


def _alone(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "gemma3"])
def test_shared_prefix_batches_compute_what_each_prompt_computes_alone(tiny_lm_dirs, tokenizer, family):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family, "pad"]).eval()
    texts = TEXTS if family != "gemma3" else [" shares", " phones sold"]  # within the tiny Gemma's 8-token window
    opening = OPENING if family != "gemma3" else "Text:"
    prompts = [tokenizer(opening + text).input_ids for text in texts]
    shared = SharedPrefix.encode(model, prompts)
    assert len(shared.ids) >= len(tokenizer(opening).input_ids) - 1 > 0
    inputs = shared.inputs(prompts, tokenizer.pad_token_id)
    assert inputs["input_ids"].shape[1] == max(map(len, prompts)) - len(shared.ids)  # the opening is not re-encoded
    with torch.no_grad():
        batched = model(**inputs).logits[:, -1]
    for row, ids in zip(batched, prompts):
        torch.testing.assert_close(row, _alone(model, ids), rtol=1e-4, atol=1e-4)


def test_nothing_is_shared_past_a_sliding_window(tiny_lm_dirs, tokenizer):
    # Sliding-window layers count cache slots, so padding between prefix and text would narrow their window.
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["gemma3", "pad"]).eval()
    prompts = [tokenizer(OPENING + text).input_ids for text in TEXTS]
    assert max(map(len, prompts)) > model.config.sliding_window
    shared = SharedPrefix.encode(model, prompts)
    assert shared.ids == [] and shared.cache is None
    with torch.no_grad():
        batched = model(**shared.inputs(prompts, tokenizer.pad_token_id)).logits[:, -1]
    for row, ids in zip(batched, prompts):
        torch.testing.assert_close(row, _alone(model, ids), rtol=1e-4, atol=1e-4)


def test_every_prompt_keeps_a_token_of_its_own(tiny_lm_dirs, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"]).eval()
    prompt = tokenizer(OPENING + TEXTS[0]).input_ids
    shared = SharedPrefix.encode(model, [prompt, prompt])
    assert shared.ids == prompt[:-1]
    with torch.no_grad():
        last = model(**shared.inputs([prompt, prompt], tokenizer.pad_token_id)).logits[:, -1]
    torch.testing.assert_close(last[0], _alone(model, prompt), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_constrained_decoding_sees_the_same_logits_with_a_shared_prefix(tiny_lm_dirs, tokenizer, family, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family, "pad"]).eval()
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(use_chat_template=False),
                                       Verbalizer(["business", "sport", "tech", "film award"]))
    texts = [text.strip() for text in TEXTS] * 2
    make_processor = classifier.logits_processor

    def run(batch_size):
        """Answers, plus the next-token logits of every decoding step (rows in classify's batch order)."""
        seen = []

        def recording():
            processor = make_processor()
            return lambda input_ids, scores: (seen.append(scores.clone()), processor(input_ids, scores))[1]

        monkeypatch.setattr(classifier, "logits_processor", recording)
        calls = []
        hook = model.register_forward_hook(
            lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
        answers = classifier.classify(texts, batch_size=batch_size)
        hook.remove()
        return answers, seen, calls

    shared, shared_logits, calls = run(batch_size=4)
    longest = max(len(ids) for ids in classifier.prompt_ids(texts))
    assert calls[0] >= 10 and calls[1] == longest - calls[0]  # the opening once, then each batch's own tokens
    monkeypatch.setattr(SharedPrefix, "encode", classmethod(lambda cls, model, prompts: cls([], None, model.device)))
    alone, alone_logits, _ = run(batch_size=4)
    assert alone == shared
    assert len(alone_logits) == len(shared_logits)
    for ours, reference in zip(shared_logits, alone_logits):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
