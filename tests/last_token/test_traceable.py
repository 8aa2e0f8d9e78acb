"""The classifier's forward traces whole: `torch.export`, `torch.compile(fullgraph=True)` and ONNX (dynamo exporter,
run with onnxruntime) give eager logits, pooling suffix and temperature included; its checks run off the graph.
Dynamo's capture is checked on every family here; inductor's generated code in tests/last_token/test_compiled.py."""

import onnxruntime
import pytest
import torch

from hf_clf_ext import LastTokenClassifierForSequenceClassification


@pytest.fixture
def classifier(tiny_lm_dir, tokenizer):
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dir, labels=["a", "b", "c"], tokenizer=tokenizer).eval()
    model.config.suffix_token_ids = tokenizer("\nLabel:", add_special_tokens=False)["input_ids"]
    model.config.temperature = 1.5
    return model


def batches(tokenizer, texts):
    for side in ("left", "right"):
        tokenizer.padding_side = side
        yield dict(tokenizer(texts, padding=True, return_tensors="pt"))


DYNAMIC = {"input_ids": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},
           "attention_mask": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}}


def test_torch_export_and_compile_fullgraph_match_eager(classifier, tokenizer, texts):
    first = next(batches(tokenizer, texts))
    exported = torch.export.export(classifier, args=(), kwargs=first, dynamic_shapes=DYNAMIC).module()
    compiled = torch.compile(classifier, fullgraph=True, dynamic=True, backend="eager")  # one graph, no breaks
    with torch.no_grad():
        for batch in batches(tokenizer, texts + ["the film won"]):  # other batch sizes and lengths reuse the graphs
            expected = classifier(**batch).logits
            torch.testing.assert_close(exported(**batch).logits, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(compiled(**batch).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_onnx_export_runs_in_onnxruntime_with_our_logits(classifier, tokenizer, texts, tmp_path):
    first = next(batches(tokenizer, texts))
    program = torch.onnx.export(classifier, (), kwargs=first, dynamo=True,
                                dynamic_shapes={name: {0: "batch", 1: "sequence"} for name in first})
    program.save(str(tmp_path / "classifier.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "classifier.onnx"))
    with torch.no_grad():
        for batch in batches(tokenizer, texts + ["the film won"]):
            logits = session.run(None, {name: value.numpy() for name, value in batch.items()})[0]
            torch.testing.assert_close(torch.from_numpy(logits), classifier(**batch).logits, atol=1e-5, rtol=1e-5)


def test_gaps_in_the_attention_mask_are_refused(classifier):
    with pytest.raises(ValueError, match="gaps in attention_mask"):
        classifier(input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=torch.tensor([[1, 0, 1, 1]]))
