"""Distillation on tiny models: a trained tiny teacher labels a pool; TF-IDF, truncated-decoder and encoder students
learn it through the recipe and the CLI; the losses, the soft-target TF-IDF fit, resumable labelling, bad pools."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertModel
from transformers import PreTrainedTokenizerFast

from hf_clf_ext import TextClassifier, cli, jobs
from hf_clf_ext.distillation.trainer import distillation_loss, soften, truncated_backbone
from hf_clf_ext.distillation.teacher_labels import label_pool
from hf_clf_ext.distillation.tfidf import TfidfClassifier

from testing_utils import synthetic
from testing_utils import NO_SUCH_MODEL, recipe, write_config

ROOT = Path(__file__).resolve().parents[2]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _files(folder: Path, multi_label: bool) -> dict:
    files = {}
    for split, (rows, seed) in {"train": (48, 1), "validation": (18, 2), "test": (24, 3), "pool": (96, 4)}.items():
        files[split] = folder / f"{split}.jsonl"
        data = synthetic(rows, seed=seed, multi_label=multi_label)
        (data.remove_columns("label") if split == "pool" else data).to_json(files[split])
    return files


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_lm_dirs):
    """Tiny last-token classifiers trained on 48 gold rows (single- and multi-label), their data and pool files."""
    made = {}
    for kind in ("single_label", "multi_label"):
        folder = tmp_path_factory.mktemp(f"teacher_{kind}")
        files = _files(folder, kind == "multi_label")
        config = write_config(folder, tiny_lm_dirs["llama", "pad"], files, num_train_epochs=8)
        recipe("train_last_token").main(["--config", str(config)])
        made[kind] = {"path": folder / "out_last_token", "files": files, "multi_label": kind == "multi_label",
                      "lm": tiny_lm_dirs["llama", "pad"]}
    return made


@pytest.fixture(params=["single_label", "multi_label"])
def teacher(request, teachers):
    return teachers[request.param]


def distill_config(tmp_path, teacher, student_type, **overrides) -> Path:
    files = teacher["files"]
    config = {
        "teacher": str(teacher["path"]),
        "student_type": student_type,
        "train_file": str(files["train"]), "validation_file": str(files["validation"]),
        "test_file": str(files["test"]), "pool_file": str(files["pool"]),
        "output_dir": str(tmp_path / f"student_{student_type}"),
        "teacher_labels_file": str(tmp_path / "teacher_labels.jsonl"),
        "num_train_epochs": 3, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "per_device_eval_batch_size": 8, "learning_rate": 3.0e-3, "head_learning_rate": 1.0e-2,
        "optim": "adamw_torch", "max_length": 64, "lora_target_modules": LORA_TARGETS, "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "seed": 0, "logging_steps": 1, "save_total_limit": 1,
    }
    config.update(overrides)
    path = tmp_path / f"distill_{student_type}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _test_texts(teacher) -> list[str]:
    return [json.loads(line)["text"] for line in open(teacher["files"]["test"])]


def test_tfidf_student_through_the_cli(tmp_path, teacher, capsys):
    config = distill_config(tmp_path, teacher, "tfidf")
    assert cli.main(["distill", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    output = tmp_path / "student_tfidf"
    results = json.loads((output / jobs.RESULTS_FILE).read_text())
    assert results["pool_size"] == 96 and results["gold_rows"] == 48 and "test_f1_macro" in printed
    assert 0.0 <= results["test_agreement"] <= 1.0 and "teacher_test_f1_macro" in results
    # Every pool, gold and test text was labelled once, and the file says for whom.
    lines = (tmp_path / "teacher_labels.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 96 + 48 + 24 and json.loads(lines[0])["teacher"] == str(teacher["path"])

    student = TextClassifier.from_pretrained(output)  # the one loader
    assert student.approach == "tfidf" and student.labels == TextClassifier.from_pretrained(teacher["path"]).labels
    card = (output / "README.md").read_text()
    assert "## Distillation" in card and "Agreement with the teacher (test)" in card and \
        "| Unlabelled pool | 96 texts |" in card
    assert "library_name: sklearn" in card
    assert cli.main(["evaluate", "--model", str(output), "--file", str(teacher["files"]["test"])]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["f1_macro"] == pytest.approx(results["test_f1_macro"], abs=1e-9)
    # The keywords decide the labels: the student learns them from the teacher's soft labels.
    assert results["test_f1_macro"] >= 0.8, results


def test_two_processes_share_the_teacher_labelling(tmp_path, teachers):
    """Under `accelerate launch` every process labels its chunks of the pool (it was the main process alone while the
    other waited); the labels file and the student are those of one process."""
    import os
    import subprocess
    import sys

    teacher = teachers["single_label"]
    one, two = tmp_path / "one", tmp_path / "two"
    results = {}
    for folder, processes in ((one, 1), (two, 2)):
        folder.mkdir()
        config = distill_config(folder, teacher, "tfidf", teacher_batch_size=4, disable_tqdm=False)
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--num_processes", str(processes),
                   str(ROOT / "recipes" / "distill.py"), "--config", str(config)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert ("teacher labels (process 0 of 2)" in done.stderr) == (processes == 2)
        results[processes] = json.loads((folder / "student_tfidf" / jobs.RESULTS_FILE).read_text())
    assert (two / "teacher_labels.jsonl").read_bytes() == (one / "teacher_labels.jsonl").read_bytes()
    for key in ("test_f1_macro", "test_agreement", "teacher_test_f1_macro", "pool_size"):
        assert results[2][key] == results[1][key], key


def test_truncated_decoder_student_trains_cards_and_exports(tmp_path, teacher, capsys):
    config = distill_config(tmp_path, teacher, "last_token", model_name_or_path=str(teacher["lm"]), student_layers=1,
                            pooling_suffix="", num_train_epochs=4)
    results = recipe("distill").main(["--config", str(config)])
    output = tmp_path / "student_last_token"
    assert json.loads((output / "config.json").read_text())["text_config"]["num_hidden_layers"] == 1
    state = json.loads(next(output.glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 8 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    card = (output / "README.md").read_text()
    assert "## Distillation" in card and "first 1 of 2 layers" in card and "distillation temperature" in card
    assert "held-out test split" in card and 0.0 <= results["test_agreement"] <= 1.0
    student = TextClassifier.from_pretrained(output)
    texts = _test_texts(teacher)
    ours = student.classify(texts)

    assert cli.main(["export", "--model", str(output), "--output", str(tmp_path / "stock")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["architecture"] == "LlamaForSequenceClassification"
    stock = TextClassifier.from_pretrained(tmp_path / "stock")
    assert stock.model.config.num_hidden_layers == 1
    for mine, exported in zip(ours, stock.classify(texts)):
        for name, p in mine["probabilities"].items():
            assert exported["probabilities"][name] == pytest.approx(p, abs=1e-5)


def test_encoder_student_from_any_auto_model(tmp_path, teachers, tokenizer_dirs):
    teacher = teachers["single_label"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dirs["pad"])
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                   pad_token_id=tokenizer.pad_token_id))
    encoder.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    config = distill_config(tmp_path, teacher, "sequence_classification", model_name_or_path=str(tmp_path / "bert"),
                            learning_rate=1.0e-3, num_train_epochs=6)
    results = recipe("distill").main(["--config", str(config)])
    output = tmp_path / "student_sequence_classification"
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert TextClassifier.from_pretrained(output).approach == "last_token"  # a stock classifier: same loader
    assert "## Distillation" in (output / "README.md").read_text()
    assert results["test_f1_macro"] >= 0.6, results


def test_an_instruction_teacher_labels_the_pool_by_label_scoring(tmp_path, teachers):
    teacher = teachers["single_label"]
    config = write_config(tmp_path, teacher["lm"], teacher["files"], approach="instruction", eval_strategy="no",
                          test_file=None, validation_file=None)
    recipe("train_instruction").main(["--config", str(config)])
    instruction = {**teacher, "path": tmp_path / "out_instruction"}
    results = recipe("distill").main(["--config", str(distill_config(tmp_path, instruction, "tfidf"))])
    lines = (tmp_path / "teacher_labels.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["method"] == "score"  # constrained decoding has no probabilities to distil
    rows = {json.loads(line)["index"]: json.loads(line)["probabilities"] for line in lines[1:]}
    assert len(rows) == 96 + 48 + 24 and np.allclose(np.sum(list(rows.values()), axis=1), 1, atol=1e-5)
    pool = [json.loads(line)["text"] for line in open(teacher["files"]["pool"])]
    scored = TextClassifier.from_pretrained(instruction["path"]).classify(pool[:3], method="score")
    for i, result in enumerate(scored):  # what a user's label scoring gives
        np.testing.assert_allclose(rows[i], list(result["probabilities"].values()), atol=1e-5)
    assert "instruction (label scoring)" in (tmp_path / "student_tfidf" / "README.md").read_text()
    assert 0.0 <= results["test_agreement"] <= 1.0


def test_a_multi_label_instruction_teachers_labels_are_those_its_users_get(tmp_path, teachers):
    """An instruction classifier names at least one label (its decoding cannot answer with none; scoring follows):
    the labels a student learns and the teacher's test scores on the card must be those, not an empty set where no
    label reaches its threshold."""
    from hf_clf_ext.metrics import metrics_from_results

    teacher = teachers["multi_label"]
    config = write_config(tmp_path, teacher["lm"], teacher["files"], approach="instruction", eval_strategy="no",
                          test_file=None, validation_file=None, num_train_epochs=1)
    recipe("train_instruction").main(["--config", str(config)])
    instruction = {**teacher, "path": tmp_path / "out_instruction"}
    settings = instruction["path"] / "instruction_prompt.json"  # thresholds tuned high: most rows reach none
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "decision_thresholds": [1.0, 1.0, 1.0]}))
    results = recipe("distill").main(["--config", str(distill_config(tmp_path, instruction, "tfidf"))])
    served = TextClassifier.from_pretrained(instruction["path"]).classify(_test_texts(teacher), method="score")
    assert all(result["labels"] for result in served)
    assert any(max(result["probabilities"].values()) < 1.0 for result in served)  # rows where the rule decides
    gold = [json.loads(line)["label"] for line in open(teacher["files"]["test"])]
    names = list(served[0]["probabilities"])
    expected = metrics_from_results(served, [[int(name in row) for name in names] for row in gold],
                                    "multi_label_classification", dict(enumerate(names)))
    assert results["teacher_test_f1_macro"] == pytest.approx(expected["f1_macro"])
    assert results["teacher_test_accuracy"] == pytest.approx(expected["accuracy"])


def test_a_bad_pool_is_an_error_before_any_model_loads(tmp_path, teachers):
    teacher = teachers["single_label"]
    files = dict(teacher["files"])
    rows = [{"text": "the market rose"}, {"text": "   "}, {"text": "film " * 50}]
    bad = tmp_path / "pool.jsonl"
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = distill_config(tmp_path, {**teacher, "path": NO_SUCH_MODEL, "files": {**files, "pool": bad}}, "tfidf")
    with pytest.raises(SystemExit, match=re.escape("Rows [1] of the pool data have empty text")):
        recipe("distill").main(["--config", str(config)])
    rows[1] = {"text": "a striker scored"}
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(SystemExit, match=r"has 1 text over 100 characters: row 2 \(249 characters\).*max_pool_chars"):
        recipe("distill").main(["--config", str(config), "--max_pool_chars", "100"])
    with pytest.raises(SystemExit, match="needs model_name_or_path"):
        recipe("distill").main(["--config", str(config), "--student_type", "last_token"])


def test_labelling_resumes_where_it_stopped(tmp_path, teachers):
    teacher = teachers["single_label"]
    model = TextClassifier.from_pretrained(teacher["path"])
    texts = [json.loads(line)["text"] for line in open(teacher["files"]["pool"])]
    whole = label_pool(model, texts, progress=False, batch_size=8, chunk_size=16)
    classify, calls = model.classify, []

    def failing(batch, **kwargs):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return classify(batch, **kwargs)

    model.classify = failing
    path = tmp_path / "labels.jsonl"
    with pytest.raises(KeyboardInterrupt):
        label_pool(model, texts, path, progress=False, batch_size=8, chunk_size=16)
    assert not path.exists()  # the file appears whole, once every chunk is done; the finished chunks are parts
    (tmp_path / "labels.jsonl.parts" / "part-0000002.jsonl.tmp7").write_text('{"index": 3, "probabil')  # a cut write
    calls.clear()
    model.classify = lambda batch, **kwargs: (calls.append(len(batch)), classify(batch, **kwargs))[1]
    resumed = label_pool(model, texts, path, progress=False, batch_size=8, chunk_size=16)
    assert sum(calls) == len(texts) - 32  # the two finished chunks were not classified again
    np.testing.assert_allclose(resumed, whole, atol=1e-6)
    with pytest.raises(ValueError, match="other texts, fingerprint"):
        label_pool(model, texts[:-1], path, progress=False)


# --- the pieces -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_label", [False, True])
def test_distillation_loss_is_hintons(multi_label):
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    teacher = torch.rand(6, 4) if multi_label else torch.softmax(torch.randn(6, 4), -1)
    labels = (torch.rand(6, 4) > 0.5).float() if multi_label else torch.randint(0, 4, (6,))
    has_gold = torch.tensor([True, False, True, False, False, True])
    T, alpha = 2.0, 0.3
    loss = distillation_loss(logits, teacher, labels, has_gold, multi_label=multi_label, temperature=T,
                             gold_weight=alpha)
    if multi_label:
        p = torch.sigmoid(logits / T)
        kl = (teacher * (teacher / p).log() + (1 - teacher) * ((1 - teacher) / (1 - p)).log()).mean(-1)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
    else:
        kl = (teacher * (teacher.log() - torch.log_softmax(logits / T, -1))).sum(-1)
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = torch.where(has_gold, alpha * ce + (1 - alpha) * T**2 * kl, T**2 * kl).mean()
    torch.testing.assert_close(loss, expected)
    # A student that already matches the teacher's distribution has nothing left to learn from it.
    match = ((teacher / (1 - teacher)).log() if multi_label else teacher.log()).requires_grad_(True)
    distillation_loss(match, teacher, labels, torch.zeros(6, dtype=torch.bool), multi_label=multi_label,
                      temperature=1.0, gold_weight=alpha).backward()
    assert match.grad.abs().max() < 1e-6


def test_soften_flattens_but_keeps_the_order():
    p = np.array([[0.7, 0.2, 0.1]])
    soft = soften(p, 2.0, multi_label=False)
    np.testing.assert_allclose(soft, np.sqrt(p) / np.sqrt(p).sum())
    np.testing.assert_allclose(soften(p, 1.0, multi_label=False), p)
    np.testing.assert_allclose(soften(np.array([[0.9, 0.5]]), 2.0, multi_label=True), [[0.75, 0.5]])


def test_tfidf_soft_targets_fit_exactly(tmp_path):
    data = synthetic(60, seed=5)
    names = sorted(set(data["label"]))
    y = np.array([names.index(label) for label in data["label"]])
    onehot = TfidfClassifier.fit(data["text"], np.eye(3)[y], names, multi_label=False, C=10.0)
    reference = LogisticRegression(C=10.0, max_iter=5000).fit(onehot.vectorizer.transform(data["text"]), y)
    np.testing.assert_allclose(onehot.coef, reference.coef_, atol=1e-3)
    # Soft targets: duplicating a row per class with its target as weight is cross-entropy to the target.
    soft = TfidfClassifier.fit(data["text"], 0.6 * np.eye(3)[y] + 0.4 / 3, names, multi_label=False)
    assert soft.predict_proba(data["text"]).max() < onehot.predict_proba(data["text"]).max()
    soft.temperature, soft.decision_thresholds = 0.5, None
    soft.save_pretrained(tmp_path / "tfidf")
    loaded = TfidfClassifier.from_pretrained(tmp_path / "tfidf")
    np.testing.assert_allclose(loaded.predict_proba(data["text"]), soft.predict_proba(data["text"]), atol=1e-12)
    assert not list((tmp_path / "tfidf").glob("*.pkl")) and not list((tmp_path / "tfidf").glob("*.joblib"))


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_truncated_backbone_keeps_the_first_layers_weights(tiny_lm_dirs, family):
    path = tiny_lm_dirs[family, "pad"]
    full = AutoModelForCausalLM.from_pretrained(path).eval()
    cut, total = truncated_backbone(str(path), 1)
    assert total == 2 and cut.config.num_hidden_layers == 1 and len(cut.base_model.layers if family != "gpt2"
                                                                     else cut.transformer.h) == 1
    ids = torch.tensor([[5, 17, 42, 9, 33, 21, 8, 14, 60, 3]])
    final_norm = full.transformer.ln_f if family == "gpt2" else full.model.norm
    with torch.no_grad():
        after_first_layer = full(ids, output_hidden_states=True).hidden_states[1]
        expected = full.lm_head(final_norm(after_first_layer))
        got = cut.eval()(ids).logits
    # the first layer's weights, the same norm and head
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="has 2 decoder layers"):
        truncated_backbone(str(path), 3)


def test_the_minilm_student_recipe_keeps_the_encoder_its_length_and_exports(tmp_path, teachers):
    """The shipped BERT-class student (`distill_minilm_bbc.yaml`, the bundled all-MiniLM-L6-v2) on a tiny teacher's
    pool: every encoder weight comes from the real checkpoint (a random or partly loaded encoder would not stay
    within a training step's reach of it), the saved tokenizer cuts where training cut, and the ONNX export
    classifies as the saved student does."""
    from safetensors.torch import load_file

    from hf_clf_ext.export import export_onnx

    teacher = teachers["single_label"]
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "distill_minilm_bbc.yaml").read_text())
    for key in ("dataset", "bbc_train_per_class", "bbc_validation_per_class"):
        del config[key]
    config.update({"teacher": str(teacher["path"]), "teacher_labels_file": str(tmp_path / "labels.jsonl"),
                   "output_dir": str(tmp_path / "minilm"), "max_length": 48, "num_train_epochs": 1,
                   "disable_tqdm": True, **{f"{split}_file": str(path) for split, path in teacher["files"].items()}})
    (tmp_path / "minilm.yaml").write_text(yaml.safe_dump(config))
    results = recipe("distill").main(["--config", str(tmp_path / "minilm.yaml")])
    output = tmp_path / "minilm"
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert (type(model).__name__, model.config.num_hidden_layers, model.config.hidden_size) == (
        "BertForSequenceClassification", 6, 384)
    source, _ = jobs.resolve_model(jobs.ScriptArguments(model_name_or_path="bundled:all-minilm-l6-v2"))
    original = load_file(str(Path(source) / "model.safetensors"))
    weights = model.bert.state_dict()
    assert set(weights) <= set(original), set(weights) - set(original)
    for name, trained in weights.items():  # a step of lr 1e-4 moves a weight by ~1e-4; a fresh init is ~0.02 away
        assert (trained - original[name]).abs().max() < 0.01, name
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(output).model_max_length == 48
    texts = _test_texts(teacher)
    export_onnx(output, tmp_path / "onnx")
    eager = TextClassifier.from_pretrained(output).classify(texts)
    served = TextClassifier.from_pretrained(tmp_path / "onnx").classify(texts)
    for mine, exported in zip(eager, served):
        assert mine["label"] == exported["label"]
        for name, p in mine["probabilities"].items():
            assert exported["probabilities"][name] == pytest.approx(p, abs=1e-4)
    assert results["test_examples_per_second"] > 0 and results["student_parameters"] > 22_000_000
