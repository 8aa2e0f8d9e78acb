"""The last-token classifier: pooling, padding invariance, losses, save/load through the Auto classes, pipeline."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast, pipeline

from hf_clf_ext import LastTokenClassifierConfig, LastTokenClassifierForSequenceClassification

LABELS = ["business", "sport", "tech"]


def build(path, tokenizer, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("labels", LABELS)
    return LastTokenClassifierForSequenceClassification.from_backbone(path, tokenizer=tokenizer, **kwargs).eval()


def logits_of(model, tokenizer, texts, padding_side):
    tokenizer.padding_side = padding_side
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_logits_do_not_depend_on_padding(tiny_lm_dir, tokenizer, texts, pooling):
    model = build(tiny_lm_dir, tokenizer, pooling=pooling)
    alone = torch.cat([logits_of(model, tokenizer, [text], "right") for text in texts])
    left = logits_of(model, tokenizer, texts, "left")
    right = logits_of(model, tokenizer, texts, "right")
    assert alone.abs().max() > 0
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)


def test_head_sees_the_last_real_token_when_pad_is_eos(tiny_lm_dirs, family, texts):
    """With pad == eos a real eos may end the text: pooling must take that eos, not the first pad after it."""
    path = tiny_lm_dirs[family, "pad_is_eos"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    model = build(path, tokenizer)
    with_eos = [text + tokenizer.eos_token for text in texts]
    for side in ("left", "right"):
        batched = logits_of(model, tokenizer, with_eos, side)
        for row, text in enumerate(with_eos):
            ids = tokenizer(text, return_tensors="pt").input_ids
            assert ids[0, -1] == tokenizer.eos_token_id
            with torch.no_grad():
                expected = model.score(model.model(ids).last_hidden_state[:, -1])
            torch.testing.assert_close(batched[row : row + 1], expected, atol=1e-5, rtol=1e-4)


def test_head_is_applied_to_pooled_vectors_only(tiny_lm_dir, tokenizer, texts):
    model = build(tiny_lm_dir, tokenizer)
    calls = []
    model.score.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    logits_of(model, tokenizer, texts, "right")
    assert calls == [torch.Size([len(texts), model.config.hidden_size])]


def test_loaded_backbone_keeps_its_attention_implementation(tiny_lm_dir, tokenizer, texts):
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="eager")
    batch = tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = causal_lm.base_model(**batch).last_hidden_state[:, -1]
    model = LastTokenClassifierForSequenceClassification.from_backbone(causal_lm, labels=LABELS, tokenizer=tokenizer)
    assert model.model is causal_lm.base_model, "the loaded backbone is reused, not copied"
    assert model.config._attn_implementation == "eager"
    assert model.model.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model.score(hidden))


def test_from_backbone_takes_the_pad_token_from_eos_when_the_tokenizer_has_none(tiny_lm_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir, pad_token=None)
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    causal_lm.config.pad_token_id = None
    assert tokenizer.pad_token_id is None
    model = LastTokenClassifierForSequenceClassification.from_backbone(causal_lm, labels=LABELS, tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id


def test_save_and_load_with_auto_classes_gives_identical_logits(tiny_lm_dir, tokenizer, texts, tmp_path):
    model = build(tiny_lm_dir, tokenizer)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is LastTokenClassifierForSequenceClassification
    assert loaded.config.id2label == dict(enumerate(LABELS))
    assert loaded.config.label2id == {label: i for i, label in enumerate(LABELS)}
    expected, actual = logits_of(model, tokenizer, texts, "left"), logits_of(loaded, tokenizer, texts, "left")
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    assert actual.argmax(-1).tolist() == expected.argmax(-1).tolist()


def test_trust_remote_code_load_without_importing_the_package(tiny_lm_dir, tokenizer, texts, tmp_path):
    model = build(tiny_lm_dir, tokenizer, problem_type="multi_label_classification")
    model.save_pretrained(tmp_path)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "hf_clf_ext" not in sys.modules, "the package was imported"
        batch = json.loads(sys.stdin.read())
        with torch.no_grad():
            logits = model(**{{k: torch.tensor(v) for k, v in batch.items()}}).logits
        print(json.dumps({{"module": type(model).__module__, "logits": logits.tolist(),
                          "problem_type": model.config.problem_type}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps({k: v.tolist() for k, v in batch.items()}),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules"), out["module"]
    assert out["problem_type"] == "multi_label_classification"
    with torch.no_grad():
        expected = model(**batch).logits
    torch.testing.assert_close(torch.tensor(out["logits"]), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_pipeline_scores(tiny_lm_dir, tokenizer, texts, tmp_path, problem_type):
    model = build(tiny_lm_dir, tokenizer, problem_type=problem_type)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classifier = pipeline("text-classification", model=str(tmp_path))
    outputs = classifier(texts, top_k=None, batch_size=2)
    logits = logits_of(model, tokenizer, texts, "right")
    expected = logits.softmax(-1) if problem_type == "single_label_classification" else logits.sigmoid()
    for scores, probabilities in zip(outputs, expected):
        assert {s["label"] for s in scores} == set(LABELS)
        got = torch.tensor([next(s["score"] for s in scores if s["label"] == label) for label in LABELS])
        torch.testing.assert_close(got, probabilities, atol=1e-5, rtol=1e-4)
    top = classifier(texts[0])
    assert top[0]["label"] == LABELS[int(expected[0].argmax())]


def _train(model, batch, labels, steps=25, lr=1e-2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_single_label_loss_goes_down(tiny_lm_dir, tokenizer, texts):
    model = build(tiny_lm_dir, tokenizer, class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    losses = _train(model, batch, torch.tensor([0, 1, 2]))
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        assert model.eval()(**batch).logits.argmax(-1).tolist() == [0, 1, 2]


def test_multi_label_loss_goes_down(tiny_lm_dir, tokenizer, texts):
    model = build(tiny_lm_dir, tokenizer, problem_type="multi_label_classification", class_weights=[1.0, 3.0, 1.0])
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    losses = _train(model, batch, targets)
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        assert (model.eval()(**batch).logits.sigmoid() > 0.5).long().tolist() == targets.tolist()


def test_loss_matches_torch_reference(tiny_lm_dir, tokenizer, texts):
    model = build(tiny_lm_dir, tokenizer, class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = torch.tensor([2, 0, -100])
    with torch.no_grad():
        out = model(**batch, labels=labels)
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    torch.testing.assert_close(out.loss, reference(out.logits[:2], labels[:2]))


# --- bad input -------------------------------------------------------------------------------------------------


def test_encoder_backbone_is_rejected(tmp_path):
    from transformers import BertConfig, BertModel, T5Config

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    with pytest.raises(ValueError, match="decoder-only"):
        LastTokenClassifierForSequenceClassification.from_backbone(bert, labels=LABELS)
    with pytest.raises(ValueError, match="encoder-decoder"):
        LastTokenClassifierConfig(text_config=T5Config(), num_labels=2)
    bert.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="decoder-only"):
        LastTokenClassifierForSequenceClassification.from_backbone(str(tmp_path), labels=LABELS)


def test_inconsistent_label_counts_are_rejected(tiny_lm_dir, tokenizer):
    with pytest.raises(ValueError, match="num_labels=3 is inconsistent"):
        LastTokenClassifierConfig(id2label={0: "a", 1: "b"}, num_labels=3)
    with pytest.raises(ValueError, match="num_labels=2 is inconsistent"):
        build(tiny_lm_dir, tokenizer, labels=LABELS, num_labels=2)
    with pytest.raises(ValueError, match="not the inverse"):
        LastTokenClassifierConfig(id2label={0: "a", 1: "b"}, label2id={"a": 1, "b": 0})
    with pytest.raises(ValueError, match="duplicate"):
        build(tiny_lm_dir, tokenizer, labels=["a", "a"])
    with pytest.raises(ValueError, match="class_weights"):
        build(tiny_lm_dir, tokenizer, class_weights=[1.0])


def test_bad_targets_are_rejected(tiny_lm_dir, tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    single = build(tiny_lm_dir, tokenizer)
    with pytest.raises(ValueError, match=r"Labels \[3, 7\] are out of range for 3 classes"):
        single(**batch, labels=torch.tensor([0, 3, 7]))
    with pytest.raises(ValueError, match="out of range"):
        single(**batch, labels=torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="multi_label_classification"):
        single(**batch, labels=torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    multi = build(tiny_lm_dir, tokenizer, problem_type="multi_label_classification")
    with pytest.raises(ValueError, match="every value 0 or 1"):
        multi(**batch, labels=torch.tensor([[1.0, 0.5, 0.0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="multi-hot of shape"):
        multi(**batch, labels=torch.tensor([0, 1, 2]))


def test_missing_pad_and_eos_is_rejected(tiny_lm_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_lm_dir, pad_token=None, eos_token=None)
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    causal_lm.config.pad_token_id = causal_lm.config.eos_token_id = None
    with pytest.raises(ValueError, match="no pad token|pad token or an eos token"):
        LastTokenClassifierForSequenceClassification.from_backbone(causal_lm, labels=LABELS, tokenizer=tokenizer)


def test_empty_batches_are_rejected(tiny_lm_dir, tokenizer):
    model = build(tiny_lm_dir, tokenizer)
    with pytest.raises(ValueError, match="Empty batch"):
        model(input_ids=torch.zeros((0, 4), dtype=torch.long))
    with pytest.raises(ValueError, match="Empty batch"):
        model(input_ids=torch.zeros((2, 0), dtype=torch.long))
    with pytest.raises(ValueError, match=r"Sequences \[1\] .* no real token"):
        model(input_ids=torch.ones((2, 3), dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))


def test_unknown_pooling_and_problem_type_are_rejected():
    with pytest.raises(ValueError, match="pooling"):
        LastTokenClassifierConfig(pooling="cls")
    with pytest.raises(ValueError, match="problem_type"):
        LastTokenClassifierConfig(problem_type="regression", num_labels=1)


def test_pooling_suffix_follows_the_last_real_token(tiny_lm_dirs, family, tokenizer, texts):
    model = build(tiny_lm_dirs[family, "pad"], tokenizer)
    suffix = tokenizer("\nLabel:", add_special_tokens=False).input_ids
    with torch.no_grad():
        manual = torch.cat(
            [model(input_ids=torch.tensor([tokenizer(text).input_ids + suffix])).logits for text in texts]
        )
    model.config.suffix_token_ids = suffix
    for side in ("left", "right"):
        torch.testing.assert_close(logits_of(model, tokenizer, texts, side), manual, atol=1e-5, rtol=1e-4)
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(batch.input_ids),
                            attention_mask=batch.attention_mask)
    torch.testing.assert_close(from_embeds.logits, manual, atol=1e-5, rtol=1e-4)


def test_temperature_divides_the_logits(tiny_lm_dir, tokenizer, texts):
    model = build(tiny_lm_dir, tokenizer)
    plain = logits_of(model, tokenizer, texts, "right")
    model.config.temperature = 2.0
    torch.testing.assert_close(logits_of(model, tokenizer, texts, "right"), plain / 2)


def test_text_longer_than_the_context_is_rejected(tiny_lm_dir, tokenizer):
    model = build(tiny_lm_dir, tokenizer)
    model.config.suffix_token_ids = [5, 6]
    with pytest.raises(ValueError, match="longer than the backbone's context of 512 tokens: truncate .* 510 tokens"):
        model(input_ids=torch.ones((1, 511), dtype=torch.long))


def test_bad_calibration_settings_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        LastTokenClassifierConfig(temperature=0.0)
    with pytest.raises(ValueError, match="multi-label classification only"):
        LastTokenClassifierConfig(num_labels=2, decision_thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="decision_thresholds must hold 2 values"):
        LastTokenClassifierConfig(num_labels=2, problem_type="multi_label_classification", decision_thresholds=[0.5])
