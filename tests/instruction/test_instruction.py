"""InstructionTrainer and InstructionClassifier on tiny models: SFT data, learning, truncation, chat templates,
saving and loading, model card, bad input."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from huggingface_hub import ModelCard

from hf_clf_ext import InstructionClassifier, InstructionPrompt, InstructionConfig, InstructionTrainer, Verbalizer
from hf_clf_ext.instruction.classifier import ANSWER_CUE
from hf_clf_ext.cards.model_card import CONFUSION_PLOT, RELIABILITY_PLOT

from conftest import publish, run_fresh
from testing_utils import instruction_config as config, synthetic
from testing_utils import brute_force_scores as _brute_force_scores, instruction_trainer as recipe  # noqa: F401

# A chat template written with the tiny tokenizer's own tokens: <unk> ends every turn (an end-of-turn token that
# is not eos, as ChatML's <|im_end|> is not eos in every tokenizer).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}<unk>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:\n{% endif %}"
)


@pytest.fixture
def llama_dir(tiny_lm_dirs):
    return tiny_lm_dirs["llama", "pad"]


def test_sft_labels_cover_the_answer_only(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path)
    assert trainer.model.peft_config["default"].r == 64  # the paper's rank for this approach
    tokens = trainer.classifier.tokens
    for row, text, ids in zip(trainer.train_dataset, trainer.train_texts, trainer.train_label_ids):
        prompt_length = sum(1 for label in row["labels"] if label == -100)
        assert row["labels"][:prompt_length] == [-100] * prompt_length
        answer = row["input_ids"][prompt_length:]
        assert row["labels"][prompt_length:] == answer == trainer.verbalizer.answer_ids(tokens, ids)
        assert answer[-1] == tokenizer.eos_token_id
        prompt = tokenizer.decode(row["input_ids"][:prompt_length])
        assert prompt.endswith(text + ANSWER_CUE) and "business, entertainment, sport" in prompt
        assert tokenizer.decode(answer, skip_special_tokens=True) == " " + trainer.label_space.names[ids[0]]


def test_short_sft_run_learns_a_synthetic_task(llama_dir, tokenizer, tmp_path):
    # Full fine-tuning: a random tiny model's LM head gives near-uniform logits that LoRA alone cannot sharpen.
    trainer = recipe(llama_dir, tokenizer, tmp_path, use_peft=False, learning_rate=2e-3, num_train_epochs=8,
                     prompt_template="Text: {text}")
    before = trainer.classification_metrics(trainer.eval_texts, trainer.eval_label_ids)
    trainer.train()
    after = trainer.classification_metrics(trainer.eval_texts, trainer.eval_label_ids)
    assert after["f1_macro_generate"] >= 0.9 and after["f1_macro_score"] >= 0.9, after
    assert after["f1_macro_generate"] > before["f1_macro_generate"] + 0.4, (before, after)
    assert after["ece_score"] < before["ece_score"]
    scored = trainer.classify(["the market", "a striker"], method="score")
    assert [s["label"] for s in scored] == ["business", "sport"]
    assert all(abs(sum(s["probabilities"].values()) - 1) < 1e-5 for s in scored)


def test_lora_training_lowers_the_answer_loss(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, learning_rate=5e-3, lora_alpha=128, num_train_epochs=3,
                     prompt_template="Text: {text}")
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0] - 0.2, losses


def _loss_and_grads(trainer, compute, batch, num_items_in_batch, train):
    """A loss function's loss, LoRA gradients and last logged metrics on one batch."""
    model = trainer.model
    model.train(train)
    model.zero_grad()
    loss = compute(trainer, model, dict(batch), num_items_in_batch=num_items_in_batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    logged = {key: values[-1] for key, values in trainer._metrics["train" if train else "eval"].items()}
    return loss.detach(), grads, logged


@pytest.mark.parametrize("num_items_in_batch, train", [(None, True), (23, True), (None, False)])
def test_answer_only_loss_matches_trl_with_the_lm_head_on_answer_positions_only(
    llama_dir, tokenizer, tmp_path, num_items_in_batch, train
):
    from trl import SFTTrainer

    # Tokens counted across accumulation steps and devices, as Trainer passes them, scale the loss like TRL's.
    trainer = recipe(llama_dir, tokenizer, tmp_path, lora_dropout=0.0, average_tokens_across_devices=True)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    answer_positions = int((batch["labels"][:, 1:] != -100).any(0).sum())
    head_rows = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: head_rows.append(args[0].shape[:-1].numel()))
    ours = _loss_and_grads(trainer, type(trainer).compute_loss, batch, num_items_in_batch, train)
    assert head_rows == [batch["input_ids"].shape[0] * answer_positions]  # not every position of every prompt
    assert answer_positions < batch["input_ids"].shape[1] / 4
    trl = _loss_and_grads(trainer, SFTTrainer.compute_loss, batch, num_items_in_batch, train)
    hook.remove()
    torch.testing.assert_close(ours[0], trl[0], rtol=1e-5, atol=1e-6)
    for name, grad in ours[1].items():
        torch.testing.assert_close(grad, trl[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert ours[2]["entropy"] == pytest.approx(trl[2]["entropy"], rel=1e-4)
    assert ours[2]["mean_token_accuracy"] == pytest.approx(trl[2]["mean_token_accuracy"])
    if train:
        assert ours[2]["num_tokens"] * 2 == trl[2]["num_tokens"]  # counted once per call, as TRL counts


def test_prompt_learning_adapters_take_trls_loss(llama_dir, tokenizer, tmp_path):
    # Prompt tuning prepends virtual tokens: answer positions counted on the input would miss the answer.
    from peft import PromptTuningConfig
    from trl import SFTTrainer

    trainer = InstructionTrainer(str(llama_dir), args=config(tmp_path), train_dataset=synthetic(16, seed=1),
                                   processing_class=tokenizer,
                                   peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    ours = _loss_and_grads(trainer, type(trainer).compute_loss, batch, None, False)
    trl = _loss_and_grads(trainer, SFTTrainer.compute_loss, batch, None, False)
    torch.testing.assert_close(ours[0], trl[0])
    from hf_clf_ext.instruction.prompt_cache import SharedPrefix

    prompts = trainer.classifier.prompt_ids(["the market", "a striker"])
    assert SharedPrefix.encode(trainer.model, prompts).ids == []  # virtual tokens come first in every forward


@pytest.mark.parametrize("bf16", [False, True])
def test_classify_runs_under_the_training_mixed_precision(llama_dir, tokenizer, tmp_path, bf16):
    trainer = recipe(llama_dir, tokenizer, tmp_path, bf16=bf16)
    dtypes = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: dtypes.append(output.dtype))
    for method in ("generate", "score"):
        trainer.classify(["the market", "a striker"], method=method)
    hook.remove()
    assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}


def test_evaluation_reports_classification_metrics(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, use_peft=False, num_train_epochs=1)
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_f1_macro_generate", "eval_accuracy_generate", "eval_f1_macro_score",
                "eval_ece_score"):
        assert key in metrics, sorted(metrics)


def test_long_texts_are_cut_never_the_answer(llama_dir, tokenizer, tmp_path):
    long = "alpha " + "the " * 300 + "market"
    rows = synthetic(6, seed=3).add_item({"text": long, "label": "entertainment"})
    trainer = recipe(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows, max_length=128)
    row = trainer.train_dataset[-1]
    assert len(row["input_ids"]) <= 128
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tokenizer.decode(answer, skip_special_tokens=True) == " entertainment"
    assert "alpha" in tokenizer.decode(row["input_ids"]) and tokenizer.decode(row["input_ids"]).count("market") == 0
    assert all(len(ids) + trainer.classifier.max_answer_length <= 128 for ids in trainer.classifier.prompt_ids([long]))


def test_chat_template_prompts_end_with_the_generation_prompt(llama_dir, tokenizer, tmp_path):
    tokenizer.chat_template = CHAT_TEMPLATE
    trainer = recipe(llama_dir, tokenizer, tmp_path, system_prompt="You label news.")
    assert trainer.prompt.use_chat_template and trainer.prompt.lead == ""
    row = trainer.train_dataset[0]
    prompt_length = sum(1 for label in row["labels"] if label == -100)
    prompt = tokenizer.decode(row["input_ids"][:prompt_length])
    assert prompt.startswith("system:\nYou label news.<unk>\nuser:\n") and prompt.endswith("assistant:\n")
    assert trainer.classifier.tokens.stop == (tokenizer.unk_token_id, tokenizer.eos_token_id)
    assert row["input_ids"][-1] == tokenizer.unk_token_id, "training answers end with the end-of-turn token"
    results = trainer.classify(list(synthetic(4, seed=9)["text"]))
    assert all(r["label"] in trainer.label_space.names for r in results)


def test_multi_label_answers_and_scores(llama_dir, tokenizer, tmp_path):
    train = synthetic(60, seed=1, multi_label=True)
    trainer = recipe(llama_dir, tokenizer, tmp_path, train=train, evaluation=synthetic(12, seed=2, multi_label=True),
                     use_peft=False, learning_rate=2e-3, num_train_epochs=20, delimiter="; ")
    row = trainer.train_dataset[0]
    answer = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    names = [trainer.label_space.names[i] for i in trainer.train_label_ids[0]]
    assert tokenizer.decode(answer, skip_special_tokens=True) == " " + "; ".join(names)
    trainer.train()
    for result in trainer.classify(list(synthetic(6, seed=4, multi_label=True)["text"])):
        assert result["labels"] and set(result["labels"]) <= set(trainer.label_space.names)
    thresholds = trainer.classifier.decision_thresholds  # tuned on the evaluation texts after training
    assert len(thresholds) == len(trainer.label_space.names)
    texts = list(synthetic(40, seed=5, multi_label=True)["text"])
    generated, scored = trainer.classify(texts), trainer.classify(texts, method="score")
    for result in scored:
        p = np.array([result["probabilities"][name] for name in trainer.label_space.names])
        hits = p >= thresholds if (p >= thresholds).any() else p == p.max()  # at least one label, as decoding names
        assert result["labels"] == [name for name, hit in zip(trainer.label_space.names, hits) if hit]
    # Label scoring follows constrained decoding (scores over the whole vocabulary cut at 0.5 agreed on 0 of 40).
    agreement = np.mean([g["labels"] == s["labels"] for g, s in zip(generated, scored)])
    assert agreement >= 0.75, agreement
    metrics = trainer.classification_metrics(trainer.eval_texts, trainer.eval_label_ids)
    assert {"subset_accuracy_generate", "hamming_loss_score", "ece_score"} <= set(metrics)
    assert not {"ece_generate", "brier_generate", "roc_auc_generate"} & set(metrics)  # hard labels: no calibration
    trainer.save_model()
    assert InstructionClassifier.from_pretrained(trainer.args.output_dir).decision_thresholds == thresholds


@pytest.mark.parametrize("base", ["hub", "local"])
def test_saved_recipe_loads_by_repo_id_as_an_instruction_classifier(base, llama_dir, tokenizer, tmp_path, hub_cache):
    """A Hub base saves the adapter (which names it); a local base saves merged. Either loads by repo id in a fresh
    offline process with the trained model's answers and scores."""
    model = str(llama_dir)
    if base == "hub":  # loaded here: TRL reads a name's config without `cache_dir`
        model = AutoModelForCausalLM.from_pretrained(publish(llama_dir, "tiny-org/llama", hub_cache),
                                                     cache_dir=str(hub_cache))
    trainer = InstructionTrainer(
        model, args=config(tmp_path, num_train_epochs=1, label_texts={"sport": "sports"}),
        train_dataset=synthetic(96, seed=1), eval_dataset=synthetic(30, seed=2), processing_class=tokenizer,
    )
    trainer.save_model(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    assert (saved / "adapter_config.json").exists() == (base == "hub")
    assert (saved / "model.safetensors").exists() == (base == "local")
    assert json.loads((saved / "verbalizer.json").read_text())["label_texts"] == {"sport": "sports"}
    texts = list(synthetic(5, seed=8)["text"])
    expected = {"generate": trainer.classify(texts), "score": trainer.classify(texts, method="score")}
    repo = publish(saved, "tiny-org/instruct", hub_cache)
    loaded = run_fresh(f"""
        import json
        from hf_clf_ext import InstructionClassifier, TextClassifier, Verbalizer
        classifier = InstructionClassifier.from_pretrained({repo!r})
        front = TextClassifier.from_pretrained({repo!r})  # the one loader, for either approach
        texts = {texts!r}
        print("RESULT", json.dumps({{"generate": classifier.classify(texts),
                                    "score": classifier.classify(texts, method="score"),
                                    "front": [front.classify(texts), front.classify(texts, method="score")],
                                    "approach": front.approach, "labels": front.labels,
                                    "verbalizer": Verbalizer.from_pretrained({repo!r}).label_texts}}))
    """, hub_cache)
    assert loaded["verbalizer"] == {"sport": "sports"}
    assert loaded["approach"] == "instruction" and loaded["labels"] == list(trainer.label_space.names)
    assert loaded["front"] == [loaded["generate"], loaded["score"]]
    assert loaded["generate"] == expected["generate"]  # labels only: constrained decoding has no probabilities
    for got, want in zip(loaded["score"], expected["score"]):
        assert got["label"] == want["label"]
        np.testing.assert_allclose(list(got["probabilities"].values()), list(want["probabilities"].values()),
                                   atol=1e-5)


def test_instruction_model_card_records_prompt_and_verbalizer(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, use_peft=False, num_train_epochs=1,
                     label_texts={"sport": "sports"})
    trainer.create_model_card(model_name="news-instruct", dataset_name="synthetic-topics")
    card = ModelCard.load(f"{trainer.args.output_dir}/README.md")
    assert "Classify the text into one of these labels: business, entertainment, sports." in card.text
    assert "| sport | `sports` |" in card.text
    assert "Label scoring" in card.text and "Constrained greedy decoding" in card.text
    results = {m["type"] for r in card.data.to_dict()["model-index"][0]["results"] for m in r["metrics"]}
    assert {"f1_macro", "accuracy"} <= results
    for plot in (RELIABILITY_PLOT, CONFUSION_PLOT):
        assert (tmp_path / "out" / plot).stat().st_size > 1000


def test_user_logits_processor_in_own_generate(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, num_train_epochs=1)
    classifier = trainer.classifier
    prompts = classifier.prompt_ids(["the market rose", "a film"])
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    out = trainer.model.generate(**batch, logits_processor=[classifier.logits_processor()], max_new_tokens=20,
                                 do_sample=True, temperature=5.0, pad_token_id=tokenizer.pad_token_id)
    for answer in tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True):
        assert trainer.verbalizer.parse(answer) in ([0], [1], [2])


@pytest.mark.parametrize("options", [
    dict(no_repeat_ngram_size=2), dict(repetition_penalty=3.0), dict(min_new_tokens=12),
    dict(bad_words_ids="labels"), dict(no_repeat_ngram_size=1, do_sample=True, top_k=3), dict(num_beams=3,
                                                                                           no_repeat_ngram_size=2),
], ids=lambda options: "-".join(options))
def test_constrained_decoding_stays_valid_whatever_generate_options(llama_dir, tokenizer, tmp_path, options):
    """generate()'s own processors run before ours: banning every valid token (the prompt lists the labels, so
    no_repeat_ngram_size bans their tokens; bad words; a minimum length that bans the stop token) must not let an
    answer escape the label set."""
    trainer = recipe(llama_dir, tokenizer, tmp_path, num_train_epochs=1)
    classifier = trainer.classifier
    if options.get("bad_words_ids") == "labels":
        options = dict(bad_words_ids=[[ids[0]] for ids in classifier.tokens.first])  # every label's first token
    prompts = classifier.prompt_ids(["the market rose and the market fell", "a film", "the striker scored"])
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    out = trainer.model.generate(**batch, logits_processor=[classifier.logits_processor()], max_new_tokens=20,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=list(classifier.tokens.stop),
                                 **options)
    for row in out[:, batch.input_ids.shape[1]:].tolist():
        end = next(i for i, token in enumerate(row) if token in classifier.tokens.stop)  # an answer always ends
        assert trainer.verbalizer.parse(tokenizer.decode(row[:end], skip_special_tokens=True)) in ([0], [1], [2])


# --- bad input -------------------------------------------------------------------------------------------------


def test_bad_prompt_and_verbalizer_settings_are_rejected(llama_dir, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"no \{text\} placeholder"):
        recipe(llama_dir, tokenizer, tmp_path, prompt_template="Classify: {labels}")
    with pytest.raises(ValueError, match="unknown placeholders"):
        InstructionPrompt(template="{text} {topic}")
    for template in ("{text[0]}", "Text: {text.upper}"):
        with pytest.raises(ValueError, match=r"reads attributes or items of a placeholder \(\{text"):
            InstructionPrompt(template=template)
    with pytest.raises(ValueError, match=r"positional placeholder \(\{\}\)"):
        InstructionPrompt(template="{text} {}")
    with pytest.raises(ValueError, match="not a valid str.format template"):
        InstructionPrompt(template="{text} {")
    with pytest.raises(ValueError, match="eval_methods names no method"):
        config(tmp_path, eval_methods=[])
    with pytest.raises(ValueError, match="share the label texts"):
        recipe(llama_dir, tokenizer, tmp_path, label_texts={"sport": "business"})
    with pytest.raises(ValueError, match="use_chat_template=True, but the tokenizer has no chat template"):
        recipe(llama_dir, tokenizer, tmp_path, use_chat_template=True)
    with pytest.raises(ValueError, match="max_length=20 leaves no room for the text"):
        recipe(llama_dir, tokenizer, tmp_path, max_length=20)


def test_multi_label_rows_without_labels_are_rejected(llama_dir, tokenizer, tmp_path):
    from datasets import Dataset

    rows = Dataset.from_dict({"text": ["market", "film", "striker"], "label": [["business"], [], ["sport"]]})
    with pytest.raises(ValueError, match="Row 1 of the training data has no label"):
        recipe(llama_dir, tokenizer, tmp_path, train=rows, evaluation=rows)


def test_classifier_rejects_empty_texts(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, num_train_epochs=1)
    with pytest.raises(ValueError, match=r"Texts \[1\] are empty"):
        trainer.classify(["market", ""])
    with pytest.raises(ValueError, match="method must be"):
        trainer.classify(["market"], method="vote")


def test_verbalizer_needs_labels():
    with pytest.raises(ValueError, match="label set is empty"):
        Verbalizer([])


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("tree", [True, False], ids=["tree-attention", "repeated-cache"])
def test_score_labels_matches_a_brute_force_forward(tiny_lm_dirs, tokenizer, family, multi_label, tree, monkeypatch):
    from transformers import AutoModelForCausalLM

    from hf_clf_ext.instruction import scoring

    monkeypatch.setattr(scoring, "TOKEN_CHUNK", 5)  # several passes, one of them partial
    monkeypatch.setattr(scoring, "LABEL_CHUNK", 2)
    if not tree:
        monkeypatch.setattr(scoring, "TREE_ATTENTION", ())
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs[family, "pad"]).eval()
    verbalizer = Verbalizer(["pos", "positive", "positive-ish", "négatif", "film award"], multi_label=multi_label,
                            max_labels=3 if multi_label else None)
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<unk>")]  # e.g. end-of-turn and eos
    tokens = verbalizer.label_tokens(tokenizer, "Label:", lead=" ", stop_ids=stops)
    assert max(len(ids) for ids in tokens.first) > 3
    texts = ["Text: good film\nLabel:", "Text: the striker scored twice in the final match\nLabel:",
             "Text: ok\nLabel:"]
    if family == "gemma3":  # past the tiny Gemma's 8-token window: one prompt, as left pads count as window slots
        texts = ["Text: ok\nLabel:"]
    prompts = [tokenizer(text).input_ids for text in texts]
    got = scoring.score_labels(model, prompts, tokens, pad_token_id=tokenizer.pad_token_id, batch_size=2)
    for prompt, row in zip(prompts, got):
        np.testing.assert_allclose(np.log(row), np.log(_brute_force_scores(model, prompt, tokens)), atol=1e-4)


def test_labels_with_distinct_first_tokens_cost_one_pass(tiny_lm_dirs, tokenizer):
    from transformers import AutoModelForCausalLM

    from hf_clf_ext.instruction import scoring
    from hf_clf_ext.instruction.verbalizer import LabelTokens

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"]).eval()
    tokens = LabelTokens(first=((40,), (41,), (42,)), after_delimiter=(), delimiter=(), stop=(2, 3), multi_label=False,
                         max_labels=None)
    prompts = [tokenizer("Text: good film\nLabel:").input_ids,
               tokenizer("Text: a long match report\nLabel:").input_ids]
    calls = []
    hook = model.register_forward_hook(lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].shape),
                                       with_kwargs=True)
    got = scoring.score_labels(model, prompts, tokens, pad_token_id=tokenizer.pad_token_id, batch_size=2)
    hook.remove()
    shared = len(tokenizer("Text:").input_ids)
    # The opening both prompts share, then the prompts' own tokens: no pass beyond them.
    assert calls == [(1, shared), (2, max(len(ids) for ids in prompts) - shared)]
    for prompt, row in zip(prompts, got):
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1].float()
        np.testing.assert_allclose(row, logits[[40, 41, 42]].softmax(-1).numpy(), atol=1e-5)


def test_card_with_constrained_decoding_only(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, use_peft=False, num_train_epochs=1, eval_methods=["generate"])
    trainer.create_model_card()
    text = ModelCard.load(f"{trainer.args.output_dir}/README.md").text
    assert "Constrained greedy decoding" in text and "Label scoring (" not in text


def test_fully_fine_tuned_model_saves_and_loads(llama_dir, tokenizer, tmp_path):
    trainer = recipe(llama_dir, tokenizer, tmp_path, use_peft=False, num_train_epochs=1)
    trainer.save_model(str(tmp_path / "full"))
    assert (tmp_path / "full" / "model.safetensors").exists() and \
        not (tmp_path / "full" / "adapter_config.json").exists()
    loaded = InstructionClassifier.from_pretrained(tmp_path / "full")
    texts = list(synthetic(5, seed=8)["text"])
    assert loaded.classify(texts) == trainer.classify(texts)


def test_classify_sorts_by_length_and_answers_in_input_order(llama_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    classifier = InstructionClassifier(
        model, tokenizer, InstructionPrompt(use_chat_template=False), Verbalizer(["sports", "politics", "science"])
    )
    texts = ["short one", "a much longer text about the market " * 6, "mid length text here", "token " * 20]
    for method in ("score", "generate"):
        together = classifier.classify(texts, method=method, batch_size=2)
        alone = [classifier.classify([text], method=method)[0] for text in texts]
        assert [r["label"] for r in together] == [r["label"] for r in alone]
        if method == "score":
            for batched, single in zip(together, alone):
                np.testing.assert_allclose(list(batched["probabilities"].values()),
                                           list(single["probabilities"].values()), atol=1e-5)
            # Random weights give every text its own probabilities, so a mixed-up order could not pass.
            assert len({round(r["probabilities"]["sports"], 6) for r in together}) == len(texts)


@pytest.mark.parametrize("approach", ["instruction", "last_token"])
def test_both_trainers_load_the_tokenizer_saved_with_the_model(llama_dir, tmp_path, approach):
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import QuantizationMethod

    from testing_utils import arguments

    def build(model):
        if approach == "instruction":
            return InstructionTrainer(model, args=config(tmp_path), train_dataset=synthetic(16, seed=1))
        from hf_clf_ext import LastTokenTrainer

        return LastTokenTrainer(model, args=arguments(tmp_path),
                                          train_dataset=synthetic(16, seed=1))

    assert build(str(llama_dir)).processing_class.name_or_path == str(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    model.quantization_method = QuantizationMethod.GGUF  # as transformers marks a model loaded with `gguf_file=`
    with pytest.raises(ValueError, match="GGUF file does not say which file its tokenizer is in"):
        build(model)


def test_many_labels_are_scored_without_repeating_the_prompt_cache(tiny_lm_dirs, tokenizer):
    """Tree attention: every pass holds one row per prompt, however many labels, and the cache is cut back."""
    from transformers import AutoModelForCausalLM

    from hf_clf_ext.instruction import scoring

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["llama", "pad"]).eval()
    verbalizer = Verbalizer([f"topic number {i}" for i in range(60)])
    tokens = verbalizer.label_tokens(tokenizer, "Label:", lead=" ")
    prompts = [tokenizer("Text: good film\nLabel:").input_ids,
               tokenizer("Text: a long match report\nLabel:").input_ids]
    rows = []
    hook = model.register_forward_hook(lambda module, args, kwargs, output: rows.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    got = scoring.score_labels(model, prompts, tokens, pad_token_id=tokenizer.pad_token_id, batch_size=2)
    hook.remove()
    assert max(rows) == 2
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    for prompt, row in zip(prompts, got):
        np.testing.assert_allclose(row, _brute_force_scores(model, prompt, tokens), atol=1e-5)


@pytest.mark.parametrize("old, new", [("generate_f1_macro", "f1_macro_generate"), ("eval_score_ece", "eval_ece_score"),
                                      ("f1_macro_score", "f1_macro_score"), ("loss", "loss")])
def test_round_two_metric_names_for_best_model_name_todays_keys(tmp_path, old, new, recwarn):
    args = InstructionConfig(output_dir=str(tmp_path), use_cpu=True, metric_for_best_model=old)
    assert args.metric_for_best_model == new
    assert any("old key order" in str(w.message) for w in recwarn.list) == (old != new)
