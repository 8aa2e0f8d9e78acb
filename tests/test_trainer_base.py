"""The two trainers share one base (`hf_clf_ext.trainer_base`): a method both define is a hook the base declares or a
Trainer/SFTTrainer override, never a second copy of the same step, so the twins cannot drift again."""

import inspect
import warnings

import pytest

from hf_clf_ext import InstructionTrainer, LastTokenTrainer
from hf_clf_ext.distillation.trainer import LastTokenDistillationTrainer
from hf_clf_ext.trainer_base import AdaptationFacts, ClassifierTrainerMixin

from testing_utils import instruction_trainer, make_trainer, synthetic

ALLOWED = set(ClassifierTrainerMixin.HOOKS) | set(ClassifierTrainerMixin.FRAMEWORK_OVERRIDES)


def own_methods(cls) -> set[str]:
    return {name for name, value in vars(cls).items()
            if inspect.isfunction(value) or isinstance(value, (staticmethod, classmethod, property))}


@pytest.mark.parametrize("trainer", [LastTokenTrainer, InstructionTrainer, LastTokenDistillationTrainer])
def test_every_trainer_inherits_the_base(trainer):
    assert issubclass(trainer, ClassifierTrainerMixin)
    # first among the bases, so that its steps (train, save_merged, the card) wrap Trainer's
    assert trainer.__mro__.index(ClassifierTrainerMixin) < trainer.__mro__.index(
        next(cls for cls in trainer.__mro__ if cls.__name__ == "Trainer"))


def test_no_method_is_defined_in_both_trainers_but_the_declared_hooks():
    shared = own_methods(LastTokenTrainer) & own_methods(InstructionTrainer)
    assert shared - ALLOWED == set(), f"defined in both trainers: move into ClassifierTrainerMixin {shared - ALLOWED}"


def test_the_declared_hooks_exist_on_the_base_and_are_implemented_by_both():
    for name in ClassifierTrainerMixin.HOOKS:
        assert name in vars(ClassifierTrainerMixin), name
    for name in ("_evaluation_facts", "_adaptation_kind", "_own_card_facts", "_after_training", "calibrate"):
        assert name in vars(LastTokenTrainer) and name in vars(InstructionTrainer), name
    assert LastTokenTrainer.card_template == "last_token" and InstructionTrainer.card_template == "instruction"


def test_shared_steps_live_in_the_base_only():
    for name in ("evaluate_dataset", "save_merged", "create_model_card", "card_facts", "_adaptation_facts", "train"):
        assert name in vars(ClassifierTrainerMixin), name
        assert name not in vars(LastTokenTrainer) and name not in vars(InstructionTrainer), name


def test_both_trainers_report_adaptation_and_evaluation_alike(tiny_lm_dirs, tokenizer, tmp_path):
    llama = tiny_lm_dirs["llama", "pad"]
    last_token = make_trainer(llama, tokenizer, tmp_path / "lt", calibrate=False)
    instruction = instruction_trainer(llama, tokenizer, tmp_path / "it", eval_methods=["score"])
    facts = [last_token._adaptation_facts(), instruction._adaptation_facts()]
    assert all(type(fact) is AdaptationFacts for fact in facts)
    for fact in facts:
        assert fact.method == "LoRA" and 0 < fact.trainable < fact.total and fact.quantization == "none"
        assert fact.hyperparameters  # the LoRA rows
    test = synthetic(8, seed=3)
    for trainer in (last_token, instruction):
        metrics = trainer.evaluate_dataset(test)
        # (`Trainer.log`, which the last-token trainer's evaluation goes through, adds `epoch` as ever)
        assert metrics and all(key.startswith("test_") for key in metrics if key != "epoch")
        assert type(trainer._card_evaluation).__name__ == "EvaluationFacts"
        assert trainer._card_evaluation.split == "test"


def test_fit_thresholds_is_a_deprecated_alias_of_calibrate(monkeypatch):
    calls = []
    monkeypatch.setattr(InstructionTrainer, "calibrate", lambda self, *a, **k: calls.append((a, k)) or [0.5])
    monkeypatch.setattr(InstructionTrainer.fit_thresholds, "warned", False)
    trainer = object.__new__(InstructionTrainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.fit_thresholds(["a"], [[0]]) == [0.5]
        trainer.fit_thresholds()
    assert calls == [((["a"], [[0]]), {}), ((), {})]
    assert sum(issubclass(w.category, FutureWarning) and "calibrate" in str(w.message) for w in caught) == 1


def test_predict_texts_is_a_deprecated_alias_of_classify(monkeypatch):
    """One verb for every classifier: the last-token trainer's `predict_texts` and the module function of that name
    still work, warning once."""
    monkeypatch.setattr(LastTokenTrainer, "classify", lambda self, texts, **k: [{"label": t} for t in texts])
    monkeypatch.setattr(LastTokenTrainer.predict_texts, "warned", False)
    trainer = object.__new__(LastTokenTrainer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.predict_texts(["a"]) == [{"label": "a"}]
        trainer.predict_texts(["b"])
        from hf_clf_ext.last_token import inference
        from hf_clf_ext.last_token.inference import predict_texts
    assert predict_texts is inference.classify_texts
    assert sum("predict_texts is now" in str(w.message) and "classify" in str(w.message) for w in caught) == 2
