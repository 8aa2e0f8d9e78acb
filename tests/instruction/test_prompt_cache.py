"""SharedPrefix: prompts that share their opening give, through the shared cache, what each gives alone; constrained
decoding answers the same with and without it."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, FalconH1Config, Gemma3TextConfig, Lfm2Config

from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer
from hf_clf_ext.instruction import scoring
from hf_clf_ext.instruction.prompt_cache import SharedPrefix
from hf_clf_ext.instruction.verbalizer import LabelTokens

from testing_utils import brute_force_scores as _brute_force_scores

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
    monkeypatch.setattr(SharedPrefix, "encode",
                        classmethod(lambda cls, model, prompts, extra_tokens=0: cls.none(model)))
    alone, alone_logits, _ = run(batch_size=4)
    assert alone == shared
    assert len(alone_logits) == len(shared_logits)
    for ours, reference in zip(shared_logits, alone_logits):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def _tiny(config_class, **kwargs):
    torch.manual_seed(0)
    config = config_class(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=1,
                          bos_token_id=None, **kwargs)
    return AutoModelForCausalLM.from_config(config).eval()


FIVE_TOKEN_LABELS = LabelTokens(first=((20, 21, 22, 23, 24), (30, 31, 32, 33, 34), (40,)), after_delimiter=(),
                                delimiter=(), stop=(1,), multi_label=False, max_labels=None)


def test_no_sharing_when_the_answer_would_run_past_a_sliding_window():
    # Prompts fit the window of 8, but prompt + label do not: padding between prefix and text would narrow it.
    model = _tiny(Gemma3TextConfig, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                  layer_types=["sliding_attention", "full_attention"])
    prompts = [[5, 6, 7, 8], [5, 6, 7, 9, 10, 11, 12, 13]]
    assert SharedPrefix.encode(model, prompts).ids == [5, 6, 7]
    assert SharedPrefix.encode(model, prompts, extra_tokens=FIVE_TOKEN_LABELS.max_answer_length).ids == []
    got = scoring.score_labels(model, prompts, FIVE_TOKEN_LABELS, pad_token_id=0, batch_size=2)
    for prompt, row in zip(prompts, got):
        np.testing.assert_allclose(np.log(row), np.log(_brute_force_scores(model, prompt, FIVE_TOKEN_LABELS)),
                                   atol=1e-4)


@pytest.mark.parametrize("family", ["lfm2", "falcon_h1"])
def test_no_sharing_with_convolutional_or_recurrent_layers(family):
    # Their state runs through the pads between prefix and text, and through labels fed side by side; plain left
    # padding and one label per row keep them exact. Falcon-H1's layers both attend and carry Mamba state.
    if family == "lfm2":
        model = _tiny(Lfm2Config, layer_types=["conv", "full_attention"])
    else:
        model = _tiny(FalconH1Config, head_dim=16, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8,
                      mamba_n_groups=1, mamba_chunk_size=4)
    prompts = [[5, 6, 7, 8], [5, 6, 7, 9, 10, 11, 12, 13]]
    assert SharedPrefix.encode(model, prompts).ids == []
    got = scoring.score_labels(model, prompts, FIVE_TOKEN_LABELS, pad_token_id=0, batch_size=2)
    for prompt, row in zip(prompts, got):
        np.testing.assert_allclose(np.log(row), np.log(_brute_force_scores(model, prompt, FIVE_TOKEN_LABELS)),
                                   atol=1e-4)


def test_constrained_decoding_with_a_cache_implementation_in_the_generation_config(tiny_lm_dirs, tokenizer):
    # generate() refuses a cache passed in when the model asks for its own kind: nothing is shared then.
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"]).eval()
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(use_chat_template=False),
                                       Verbalizer(["business", "sport", "tech"]))
    texts = [text.strip() for text in TEXTS]
    expected = classifier.classify(texts, batch_size=2)
    model.generation_config.cache_implementation = "static"
    assert classifier.classify(texts, batch_size=2) == expected
