"""Saves reload the model that was trained, quietly: the base loads at the commit it was trained on (not wherever its
branch has moved), the classifier's own revision or subfolder never leaks into the base's lookup, an adapter + head
load reports nothing missing (and fails when the head really is missing), saved last-token tokenizers strip texts as
the package does, and a final save is a final save whatever its folder is called."""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_clf_ext import (
    InstructionTrainer,
    LastTokenClassifierForSequenceClassification,
    LastTokenTrainer,
)
from hf_clf_ext.last_token.modeling_last_token import ADAPTER_SUBFOLDER

from conftest import _tiny_config, publish, run_fresh
from testing_utils import instruction_config
from testing_utils import arguments, copy_naming_tokenizer_class, synthetic

BASE = "tiny-org/moving-base"
TEXTS = ["the bank cut interest rates", "the striker scored twice in the final match", "phones sold well!"]
NOISE = ("LOAD REPORT", "MISSING", "newly initialized", "Consider training")


def commit_of(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


@pytest.fixture
def moving_base(hub_cache, tokenizer):
    """`BASE` in the Hub-layout cache with two commits of different random weights (same architecture and tokenizer);
    `refs/main` points at the second. Returns `(first, second, point_main)`."""
    root = Path(hub_cache) / f"models--{BASE.replace('/', '--')}"
    commits = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            _tiny_config("llama", len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id))
        commit = commit_of(f"{BASE}@{seed}")
        model.save_pretrained(root / "snapshots" / commit)
        tokenizer.save_pretrained(root / "snapshots" / commit)
        commits.append(commit)
    (root / "refs").mkdir()

    def point_main(commit):
        (root / "refs" / "main").write_text(commit)

    point_main(commits[1])
    return commits[0], commits[1], point_main


def logits(model, tokenizer, texts=TEXTS) -> list:
    with torch.no_grad():
        return [model(**tokenizer([text], return_tensors="pt")).logits.float()[0].tolist() for text in texts]


def run_fresh_verbose(code: str, hub_cache) -> tuple[dict, str]:
    """`conftest.run_fresh` at transformers' default verbosity (warnings shown): the JSON printed after `RESULT `,
    and everything the process wrote to stdout and stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache),
           "HF_MODULES_CACHE": str(Path(hub_cache) / "modules")}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(results[-1]), done.stdout + done.stderr


def without_revision(saved: Path, copy: Path) -> Path:
    """A copy of an adapter + head save as saves were before the base's commit was recorded."""
    shutil.copytree(saved, copy)
    config = json.loads((copy / "config.json").read_text())
    config.pop("base_model_revision", None)
    (copy / "config.json").write_text(json.dumps(config))
    adapter = json.loads((copy / ADAPTER_SUBFOLDER / "adapter_config.json").read_text())
    adapter["revision"] = None
    (copy / ADAPTER_SUBFOLDER / "adapter_config.json").write_text(json.dumps(adapter))
    return copy


def test_adapter_save_reloads_on_the_base_commit_it_was_trained_on(moving_base, hub_cache, tokenizer, tmp_path):
    """Trained on `revision=<first commit>` while `main` holds another: the save names the commit (config.json and
    adapter_config.json) and a fresh process loading the classifier by repo id gets the trained logits, also when
    it names the classifier's own revision; a save without the record would load `main`'s base (other logits).
    Nothing in that process reports missing weights."""
    first, second, _ = moving_base
    trainer = LastTokenTrainer(
        BASE, args=arguments(tmp_path, max_steps=1, eval_strategy="no", load_best_model_at_end=False),
        train_dataset=synthetic(8, 0), processing_class=tokenizer,
        model_init_kwargs={"revision": first, "cache_dir": str(hub_cache)},
    )
    trainer.train()
    trainer.save_model()
    expected = logits(trainer.model.eval(), tokenizer)
    saved = tmp_path / "out"
    assert json.loads((saved / "config.json").read_text())["base_model_revision"] == first
    assert json.loads((saved / ADAPTER_SUBFOLDER / "adapter_config.json").read_text())["revision"] == first
    repo = publish(saved, "tiny-org/classifier", hub_cache)
    unpinned = publish(without_revision(saved, tmp_path / "unpinned"), "tiny-org/unpinned", hub_cache)

    loaded, output = run_fresh_verbose(f"""
        import json, sys, torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        def logits(repo, **kwargs):
            model = AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True, **kwargs).eval()
            tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True, **kwargs)
            with torch.no_grad():
                return [model(**tokenizer([t], return_tensors="pt")).logits[0].tolist() for t in {TEXTS!r}]
        print("RESULT", json.dumps({{
            "pinned": logits({repo!r}),
            "own_revision": logits({repo!r}, revision={commit_of(repo)!r}),
            "unpinned": logits({unpinned!r}),
            "package_imported": "hf_clf_ext" in sys.modules}}))
    """, hub_cache)
    assert not loaded["package_imported"]  # the remote code copied next to the weights did all of it
    torch.testing.assert_close(torch.tensor(loaded["pinned"]), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded["own_revision"]), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    assert (torch.tensor(loaded["unpinned"]) - torch.tensor(expected)).abs().max() > 1e-3  # main's base differs
    assert not [word for word in NOISE if word in output], output[-3000:]


def test_instruction_adapter_keeps_the_base_commit_main_had_at_training(moving_base, hub_cache, tokenizer, tmp_path,
                                                                       monkeypatch):
    """No revision given: the adapter records the commit `main` pointed to in training, so moving `main` later does
    not change the loaded model. The instruction tokenizer is saved as it was (no strip: its prompts end with the
    newline of a template)."""
    first, second, point_main = moving_base
    point_main(first)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))  # TRL reads names without cache_dir
    trainer = InstructionTrainer(
        BASE, args=instruction_config(tmp_path, max_steps=1, use_chat_template=False),
        train_dataset=synthetic(8, 0), processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    saved = tmp_path / "out"
    assert json.loads((saved / "adapter_config.json").read_text())["revision"] == first
    ids = trainer.classifier.prompt_ids(TEXTS[:1])
    with torch.no_grad():
        expected = trainer.model.eval()(torch.tensor(ids)).logits[0, -1].tolist()
    saved_tokenizer = AutoTokenizer.from_pretrained(saved)
    assert saved_tokenizer("some text\n")["input_ids"] != saved_tokenizer("some text")["input_ids"]
    point_main(second)
    repo = publish(saved, "tiny-org/instruct", hub_cache)
    loaded, _ = run_fresh_verbose(f"""
        import json, torch
        from hf_clf_ext import InstructionClassifier
        classifier = InstructionClassifier.from_pretrained({repo!r})
        with torch.no_grad():
            logits = classifier.model(torch.tensor({ids!r})).logits[0, -1].tolist()
        print("RESULT", json.dumps({{"logits": logits, "prompt_ids": classifier.prompt_ids({TEXTS[:1]!r})}}))
    """, hub_cache)
    assert loaded["prompt_ids"] == ids
    torch.testing.assert_close(torch.tensor(loaded["logits"]), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def adapter_head_save(base_dir, tokenizer, folder: Path, with_head: bool = True):
    """An adapter + head save as the trainer writes it (adapter in `adapter/`, the classifier config at the top),
    with a LoRA adapter that changes the logits; `with_head=False` leaves the head out of the adapter."""
    torch.manual_seed(0)
    classifier = LastTokenClassifierForSequenceClassification.from_backbone(
        str(base_dir), labels=["a", "b", "c"], tokenizer=tokenizer)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      modules_to_save=["score"] if with_head else None)
    model = get_peft_model(classifier, lora).eval()
    model.save_pretrained(folder / ADAPTER_SUBFOLDER)
    if not with_head:  # PEFT adds `score` for SEQ_CLS by itself: remove it from the saved weights
        weights = folder / ADAPTER_SUBFOLDER / "adapter_model.safetensors"
        save_file({key: value for key, value in load_file(weights).items() if ".score." not in key}, weights)
    config = classifier.config
    config.adapter_subfolder, config.base_model_name_or_path = ADAPTER_SUBFOLDER, str(base_dir)
    config.architectures = [type(classifier).__name__]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    handler = Collect()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def test_adapter_and_head_load_without_a_missing_weights_report(tiny_lm_dirs, tokenizer, tmp_path, capfd, recwarn,
                                                               transformers_log):
    """The head comes from the adapter, so transformers must not report it as MISSING / newly initialized when the
    backbone loads; an adapter whose file lacks the head is an error, not a random head."""
    base = tiny_lm_dirs["llama", "pad"]
    trained = adapter_head_save(base, tokenizer, tmp_path / "saved")
    expected = logits(trained, tokenizer)
    capfd.readouterr()
    transformers_log.clear()
    recwarn.clear()
    for load in (LastTokenClassifierForSequenceClassification.from_pretrained,
                 AutoModelForSequenceClassification.from_pretrained):
        model = load(str(tmp_path / "saved")).eval()
        torch.testing.assert_close(torch.tensor(logits(model, tokenizer)), torch.tensor(expected), atol=1e-5,
                                   rtol=1e-5)
    model, info = LastTokenClassifierForSequenceClassification.from_pretrained(
        str(tmp_path / "saved"), output_loading_info=True)
    assert not info["missing_keys"]
    assert r"^score\." not in model._keys_to_ignore_on_load_missing  # no lasting effect on the model
    output = "\n".join(["".join(capfd.readouterr()), *transformers_log, *(str(w.message) for w in recwarn)])
    assert not [word for word in NOISE if word in output], output[-3000:]
    assert "missing" not in output.lower(), output[-3000:]  # nor PEFT's "Found missing adapter keys"

    adapter_head_save(base, tokenizer, tmp_path / "headless", with_head=False)
    with pytest.raises(ValueError, match=r"no weights for the classification head \(score.weight\)"):
        LastTokenClassifierForSequenceClassification.from_pretrained(str(tmp_path / "headless"))

    # A whole model whose checkpoint lacks the head still gets transformers' report: only the adapter path is quiet.
    whole = tmp_path / "whole"
    LastTokenClassifierForSequenceClassification.from_backbone(str(base), labels=["a", "b"]).save_pretrained(whole)
    weights = whole / "model.safetensors"
    save_file({key: value for key, value in load_file(weights).items() if not key.startswith("score.")}, weights)
    transformers_log.clear()
    LastTokenClassifierForSequenceClassification.from_pretrained(str(whole))
    assert "score.weight | MISSING" in "\n".join(transformers_log)


def test_saved_last_token_tokenizer_strips_like_the_package(tiny_lm_dirs, tokenizer, tmp_path):
    """Plain transformers users of a saved model (AutoTokenizer, pipeline) get the tokens the model was trained on
    for texts with white space around them; the pooling suffix, which is no whole text, keeps its white space."""
    trainer = LastTokenTrainer(
        str(tiny_lm_dirs["llama", "pad"]),
        args=arguments(tmp_path, max_steps=1, eval_strategy="no", load_best_model_at_end=False),
        train_dataset=synthetic(8, 0), processing_class=tokenizer,
    )
    trainer.save_model()  # a local base: saved merged
    folder = str(tmp_path / "out")
    plain = AutoTokenizer.from_pretrained(folder)
    assert plain("  some text\n")["input_ids"] == plain("some text")["input_ids"]
    assert plain("\u3000some text\u2028")["input_ids"] == plain("some text")["input_ids"]
    assert plain("some\ntext")["input_ids"] != plain("some text")["input_ids"]  # inner white space is kept
    classify = pipeline("text-classification", model=folder, top_k=None)
    padded, bare = classify(["  the bank cut interest rates\n", "the bank cut interest rates"])
    assert {r["label"]: r["score"] for r in padded} == pytest.approx({r["label"]: r["score"] for r in bare}, abs=1e-6)

    # The pooling suffix follows a text: a stripping tokenizer (this saved one) must not lose its leading newline.
    again = LastTokenTrainer(
        str(tiny_lm_dirs["llama", "pad"]),
        args=arguments(tmp_path / "again", eval_strategy="no", load_best_model_at_end=False),
        train_dataset=synthetic(8, 0), processing_class=plain,
    )
    suffix = trainer.model.config.suffix_token_ids
    assert trainer.model.config.pooling_suffix.startswith("\n") and suffix[0] == tokenizer.convert_tokens_to_ids("Ċ")
    assert again.model.config.suffix_token_ids == suffix


@pytest.mark.parametrize("tokenizer_class", ["GPT2Tokenizer", "Qwen2Tokenizer"])
def test_a_base_with_its_own_tokenizer_class_saves_tokenizers_that_strip(tiny_lm_dirs, tmp_path, tokenizer_class):
    """A base whose tokenizer_config names a model's own class (SmolLM2's and GPT-2's Hub repos: GPT2Tokenizer;
    Qwen: Qwen2Tokenizer) loads as that class, which transformers 5 rebuilds from its vocabulary on load, dropping the
    Strip in the saved tokenizer.json: the saved classifier and its stock export gave plain transformers users other
    tokens, and other probabilities, for texts with white space around them than training saw."""
    from hf_clf_ext.export import export_stock

    base = copy_naming_tokenizer_class(tiny_lm_dirs["llama", "pad"], tmp_path / "base", tokenizer_class)
    assert type(AutoTokenizer.from_pretrained(base)).__name__ == tokenizer_class
    trainer = LastTokenTrainer(str(base), args=arguments(tmp_path, max_steps=1, eval_strategy="no",
                                                         load_best_model_at_end=False),
                               train_dataset=synthetic(8, 0))  # the base's own tokenizer, as the CLI loads it
    trainer.save_model()  # a local base: saved merged
    export_stock(tmp_path / "out", tmp_path / "stock")
    messy = ["  the bank cut interest rates\n", "\u3000phones sold well!\u2028"]
    clean = [text.strip() for text in messy]
    assert trainer.processing_class(messy)["input_ids"] == trainer.processing_class(clean)["input_ids"]
    for kind in ("out", "stock"):
        plain = AutoTokenizer.from_pretrained(tmp_path / kind)
        assert plain(messy)["input_ids"] == plain(clean)["input_ids"], kind
    code = f"""
import json, sys
from transformers import pipeline
piped = pipeline("text-classification", model={str(tmp_path / "stock")!r}, top_k=None)
rows = [{{r["label"]: r["score"] for r in row}} for row in piped({messy + clean!r})]
print("RESULT", json.dumps({{"rows": rows, "package": "hf_clf_ext" in sys.modules}}))
"""
    loaded = run_fresh(code)
    assert loaded["package"] is False
    rows = loaded["rows"]
    for padded, bare in zip(rows[:2], rows[2:]):
        assert padded == pytest.approx(bare, abs=1e-6)
    assert rows[0] != pytest.approx(rows[1], abs=1e-3)  # the texts tell apart: the probabilities are no constant


def test_final_save_into_a_checkpoint_named_folder_keeps_the_loadable_layout(moving_base, hub_cache, tokenizer,
                                                                            tmp_path):
    """Only Trainer's own checkpoints keep PEFT's layout; `save_model` into a folder called `checkpoint-best` is a
    final save (adapter in `adapter/`, no top-level adapter_config.json that would make the Auto classes load the
    bare base). Trained without a revision, both saves name the commit `main` had then and keep loading it."""
    first, main_then, point_main = moving_base
    trainer = LastTokenTrainer(
        BASE, args=arguments(tmp_path, max_steps=1, eval_strategy="no", load_best_model_at_end=False,
                             save_strategy="steps", save_steps=1),
        train_dataset=synthetic(8, 0), processing_class=tokenizer, model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / "adapter_config.json").exists()  # Trainer resumes from this layout
    final = tmp_path / "checkpoint-best"
    trainer.save_model(str(final))
    assert not (final / "adapter_config.json").exists()
    assert (final / ADAPTER_SUBFOLDER / "adapter_config.json").exists()
    assert json.loads((final / "config.json").read_text())["base_model_revision"] == main_then
    expected = torch.tensor(logits(trainer.model.eval(), tokenizer))
    point_main(first)  # the base repository moves on: neither save follows it
    for folder in (final, checkpoint):  # the checkpoint in PEFT's layout names the commit in adapter_config.json
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), cache_dir=str(hub_cache)).eval()
        torch.testing.assert_close(torch.tensor(logits(model, tokenizer)), expected, atol=1e-5, rtol=1e-5)


def test_training_on_from_a_merged_classifier_names_that_classifier_as_base(tiny_lm_dirs, hub_cache, tokenizer,
                                                                           tmp_path):
    """A classifier loaded from a merged save holds fine-tuned backbone weights: an adapter trained on it names that
    repository (at its commit) as its base, not the original base its config still remembers, and reloads with the
    trained logits. Its repository's files are also found under a `subfolder`."""
    base = publish(tiny_lm_dirs["llama", "pad"], "tiny-org/base", hub_cache)
    first = LastTokenTrainer(
        base, args=arguments(tmp_path / "1", max_steps=1, eval_strategy="no", load_best_model_at_end=False,
                             merge_adapter=True, learning_rate=0.05),
        train_dataset=synthetic(8, 0), processing_class=tokenizer, model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    first.train()
    first.save_model()
    merged = publish(tmp_path / "1" / "out", "tiny-org/merged", hub_cache)
    classifier = AutoModelForSequenceClassification.from_pretrained(merged, cache_dir=str(hub_cache))
    second = LastTokenTrainer(
        classifier, args=arguments(tmp_path / "2", max_steps=1, eval_strategy="no", load_best_model_at_end=False),
        train_dataset=synthetic(8, 1), processing_class=tokenizer, model_init_kwargs={"cache_dir": str(hub_cache)},
    )
    second.train()
    second.save_model()
    saved = tmp_path / "2" / "out"
    config = json.loads((saved / "config.json").read_text())
    assert (config["base_model_name_or_path"], config["base_model_revision"]) == (merged, commit_of(merged))
    expected = logits(second.model.eval(), tokenizer)
    reloaded = LastTokenClassifierForSequenceClassification.from_pretrained(str(saved), cache_dir=str(hub_cache))
    torch.testing.assert_close(torch.tensor(logits(reloaded.eval(), tokenizer)), torch.tensor(expected), atol=1e-5,
                               rtol=1e-5)

    # The same save inside a subfolder of a repository: config, adapter and head all come from that subfolder.
    nested = tmp_path / "nested"
    shutil.copytree(saved, nested / "sub")
    repo = publish(nested, "tiny-org/nested", hub_cache)
    from_subfolder = LastTokenClassifierForSequenceClassification.from_pretrained(
        repo, subfolder="sub", cache_dir=str(hub_cache))
    torch.testing.assert_close(torch.tensor(logits(from_subfolder.eval(), tokenizer)), torch.tensor(expected),
                               atol=1e-5, rtol=1e-5)


def test_a_save_never_overwrites_the_model_it_was_trained_from(tiny_lm_dirs, tokenizer, tmp_path):
    """`output_dir` (or a `save_model` folder) that is the backbone's own folder is an error: the save would replace
    the user's causal LM with a classifier (and a stripping tokenizer) while its weights are read from there."""
    base = tmp_path / "my-llama"
    shutil.copytree(tiny_lm_dirs["llama", "pad"], base)
    before = {path.name: path.read_bytes() for path in base.iterdir()}
    args = dict(max_steps=1, eval_strategy="no", load_best_model_at_end=False)
    with pytest.raises(ValueError, match="is the folder the model was loaded from"):
        LastTokenTrainer(str(base), args=arguments(tmp_path, output_dir=str(base), **args),
                                   train_dataset=synthetic(8, 0), processing_class=tokenizer)
    with pytest.raises(ValueError, match="is the folder the model was loaded from"):
        InstructionTrainer(str(base), args=instruction_config(tmp_path, output_dir=str(base / "."), max_steps=1),
                             train_dataset=synthetic(8, 0), processing_class=tokenizer)
    trainer = LastTokenTrainer(str(base), args=arguments(tmp_path, **args), train_dataset=synthetic(8, 0),
                                         processing_class=tokenizer)
    with pytest.raises(ValueError, match="is the folder the model was loaded from"):
        trainer.save_model(str(base))
    assert {path.name: path.read_bytes() for path in base.iterdir()} == before
