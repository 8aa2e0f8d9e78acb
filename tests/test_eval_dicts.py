"""Several evaluation sets, as a dict (transformers.Trainer's `eval_dataset={"name": ...}`): both trainers evaluate
each under its own prefix, and select the best checkpoint on the first one's metric by default."""

import pytest

from hf_clf_ext import InstructionTrainer, LastTokenTrainer

from testing_utils import instruction_config
from testing_utils import arguments, synthetic


@pytest.mark.parametrize("approach", ["last_token", "instruction"])
def test_a_dict_of_evaluation_sets(approach, tiny_lm_dirs, tokenizer, tmp_path):
    evaluation = {"news": synthetic(12, seed=2), "forum": synthetic(10, seed=3)}
    common = dict(eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, num_train_epochs=2)
    if approach == "last_token":
        trainer = LastTokenTrainer(str(tiny_lm_dirs["llama", "pad"]), args=arguments(tmp_path, **common),
                                             train_dataset=synthetic(24, seed=1), eval_dataset=evaluation,
                                             processing_class=tokenizer)
        metric = "f1_macro"
    else:
        trainer = InstructionTrainer(str(tiny_lm_dirs["llama", "pad"]), args=instruction_config(tmp_path, **common),
                                       train_dataset=synthetic(24, seed=1), eval_dataset=evaluation,
                                       processing_class=tokenizer)
        metric = "loss"  # SFTConfig selects on the loss by default
    assert trainer.args.metric_for_best_model == f"news_{metric}"
    trainer.train()
    assert trainer.state.best_metric is not None
    metrics = trainer.evaluate()
    assert {f"eval_news_{metric}", f"eval_forum_{metric}"} <= set(metrics)
    if approach == "instruction":  # classification metrics for every set, on its own texts
        assert {"eval_news_f1_macro_generate", "eval_forum_f1_macro_score"} <= set(metrics)
        forum = trainer.classification_metrics(list(evaluation["forum"]["text"]),
                                               [[trainer.label_space.names.index(label)] for label in
                                                evaluation["forum"]["label"]], methods=["generate"])
        assert forum["f1_macro_generate"] == metrics["eval_forum_f1_macro_generate"]
