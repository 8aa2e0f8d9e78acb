"""Streaming training: a `datasets.IterableDataset` (a local JSON Lines file read lazily, as `streaming=True` reads
Hub datasets) trains the last-token classifier without ever being held whole: the label space comes from `labels=`
or from one pass over the label column, rows are tokenised as the trainer consumes them, and the result equals
in-memory training on the same rows in the same order. What cannot work (no `max_steps`) is an error before a model
loads."""

import json

import numpy as np
import pytest
import torch
from datasets import IterableDataset, load_dataset

from hf_clf_ext import InstructionTrainer, LastTokenConfig, LastTokenTrainer, jobs
from hf_clf_ext.labels import build_label_space

from testing_utils import arguments, instruction_config, recipe, synthetic, write_config


def stream(path) -> IterableDataset:
    return load_dataset("json", data_files=str(path), split="train", streaming=True)


@pytest.fixture
def rows(tmp_path):
    data = synthetic(48, seed=1, multi_label=False)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data), encoding="utf-8")
    return data, path


def weights(trainer) -> dict:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("labels_given", [False, True])
def test_a_stream_trains_like_the_same_rows_in_memory_in_the_same_order(rows, tiny_lm_dirs, tokenizer, tmp_path,
                                                                         labels_given):
    data, path = rows
    common = dict(max_steps=4, per_device_train_batch_size=8, eval_strategy="no", save_strategy="no",
                  load_best_model_at_end=False, calibrate=False, lora_dropout=0.0, logging_steps=1)
    space = build_label_space(data, "label")
    labels = list(space.names) if labels_given else None
    streamed = LastTokenTrainer(str(tiny_lm_dirs["llama", "pad"]), args=arguments(tmp_path / "s", **common),
                                train_dataset=stream(path), processing_class=tokenizer, labels=labels)
    assert isinstance(streamed.train_dataset, IterableDataset)  # never materialised
    assert streamed.label_space == space  # from one pass over the label column, or from labels=
    streamed.train()
    in_memory = LastTokenTrainer(str(tiny_lm_dirs["llama", "pad"]),
                                 args=arguments(tmp_path / "m", train_sampling_strategy="sequential", **common),
                                 train_dataset=data, processing_class=tokenizer, labels=labels)
    in_memory.train()
    losses = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (streamed, in_memory)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    got, want = weights(streamed), weights(in_memory)
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)
    # What the card reports of the training rows was counted as they streamed by (4 steps x 8 = 32 rows).
    facts = streamed.card_facts()
    assert sum(facts.label_counts) == 32 and facts.split_lengths["train"] and len(facts.split_lengths["train"]) == 32
    streamed.save_model()
    texts = list(data["text"][:5])
    np.testing.assert_allclose(
        [[r["probabilities"][n] for n in space.names] for r in streamed.classify(texts)],
        [[r["probabilities"][n] for n in space.names] for r in in_memory.classify(texts)], atol=1e-5)


def test_what_a_stream_cannot_do_is_refused_before_a_model_loads(rows, tmp_path):
    data, path = rows
    with pytest.raises(ValueError, match="has no length: set max_steps"):
        LastTokenTrainer("no/such-model", args=arguments(tmp_path), train_dataset=stream(path))
    with pytest.raises(ValueError, match="The evaluation data is a stream"):
        LastTokenTrainer("no/such-model", args=arguments(tmp_path, max_steps=2), train_dataset=data,
                         eval_dataset=stream(path))
    with pytest.raises(ValueError, match="InstructionTrainer reads its data whole"):
        InstructionTrainer("no/such-model", args=instruction_config(tmp_path, max_steps=2), train_dataset=stream(path))


def test_the_recipe_streams_its_training_file(rows, tiny_lm_dirs, data_files, tmp_path):
    _, path = rows
    config = write_config(tmp_path, tiny_lm_dirs["llama", "pad"], dict(data_files, train=path), streaming=True,
                          max_steps=3, eval_strategy="no", load_best_model_at_end=False, calibrate=False)
    results = recipe("train_last_token").main(["--config", str(config)])
    assert results["streamed"] is True and "test_f1_macro" in results
    with pytest.raises(jobs.JobError, match="streaming .* needs max_steps"):
        jobs.prepare(LastTokenConfig, ["--config", str(config), "--max_steps", "-1"])


def test_a_streamed_hub_dataset_is_never_downloaded_whole(data_files, tmp_path, monkeypatch):
    """`streaming: true` with a Hub dataset reads every split lazily: the training split stays a stream, the
    evaluation splits are read row by row into memory; nothing asks `load_dataset` for the whole dataset prepared
    (it used to, before streaming the training split: a dataset too big for the disk could not stream)."""
    from hf_clf_ext.jobs import ScriptArguments, load_splits

    files = {"train": str(data_files["train"]), "validation": str(data_files["validation"]),
             "test": str(data_files["test"])}
    asked = []

    def hub(name, config=None, split=None, streaming=False):  # a Hub dataset, from local files
        asked.append({"name": name, "split": split, "streaming": streaming})
        return load_dataset("csv", data_files=files, split=split, streaming=streaming)

    monkeypatch.setattr(jobs, "load_dataset", hub)
    splits = load_splits(ScriptArguments(model_name_or_path="unused", dataset="org/news", streaming=True))
    assert asked == [{"name": "org/news", "split": None, "streaming": True}]
    assert isinstance(splits["train"], IterableDataset) and not isinstance(splits["test"], IterableDataset)
    assert splits["test"]["text"] == load_dataset("csv", data_files=files, split="test")["text"]
