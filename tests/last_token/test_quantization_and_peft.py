"""4-bit NF4 backbones (bitsandbytes on CPU) and LoRA adapters around the last-token classifier."""

import bitsandbytes as bnb
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig

from hf_clf_ext import LastTokenClassifierForSequenceClassification

LABELS = ["business", "sport", "tech"]
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def nf4(compute_dtype=torch.float32):
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def test_nf4_backbone_keeps_a_float32_head(tiny_lm_dirs, tokenizer, texts):
    path = tiny_lm_dirs["llama", "pad"]
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        path, labels=LABELS, tokenizer=tokenizer, quantization_config=nf4(torch.bfloat16), dtype=torch.bfloat16
    ).eval()
    assert model.is_loaded_in_4bit
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.model.layers[0].self_attn.q_proj.weight.quant_state.quant_type == "nf4"
    assert type(model.score) is torch.nn.Linear
    assert model.score.weight.dtype == torch.float32
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # Quantization perturbs the backbone, not the head: the same head on float32 hidden states disagrees only a bit.
    full = LastTokenClassifierForSequenceClassification.from_backbone(path, labels=LABELS, tokenizer=tokenizer).eval()
    full.score.load_state_dict(model.score.state_dict())
    with torch.no_grad():
        reference = full(**batch).logits
    assert not torch.equal(logits, reference)
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.1)


def test_a_saved_head_stays_float32_when_loaded_in_bfloat16(tiny_lm_dirs, tokenizer, tmp_path):
    model = LastTokenClassifierForSequenceClassification.from_backbone(tiny_lm_dirs["llama", "pad"], labels=LABELS)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert loaded.score.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.score.weight, model.score.weight, atol=0, rtol=0)


def test_wrapping_a_loaded_nf4_causal_lm_carries_its_quantization_state(tiny_lm_dirs, tokenizer, texts):
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_lm_dirs["qwen2", "pad"], quantization_config=nf4())
    model = LastTokenClassifierForSequenceClassification.from_backbone(causal_lm, labels=LABELS, tokenizer=tokenizer)
    assert model.is_loaded_in_4bit and model.hf_quantizer is causal_lm.hf_quantizer
    assert model.config.quantization_config.load_in_4bit
    assert model.score.weight.dtype == torch.float32
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    assert torch.isfinite(model(**batch).logits).all()


def test_qlora_trains_the_adapters_and_the_head(tiny_lm_dirs, tokenizer, texts):
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dirs["llama", "pad"], labels=LABELS, tokenizer=tokenizer, quantization_config=nf4()
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                             target_modules=LORA_TARGETS["llama"]))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable) and any("score" in name for name in trainable)
    assert not any("base_layer" in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = torch.tensor([0, 1, 2])
    losses = []
    for _ in range(20):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_lora_adapter_round_trip_and_merge_give_identical_logits(tiny_lm_dirs, family, tokenizer, texts, tmp_path):
    torch.manual_seed(0)
    base = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dirs[family, "pad"], labels=LABELS, tokenizer=tokenizer
    )
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16,
                                            target_modules=LORA_TARGETS[family]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    for _ in range(3):  # move lora_B away from zero and the head away from its initial weights
        model(**batch, labels=torch.tensor([0, 1, 2])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "adapter")
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as adapter:
        assert any(".score." in key for key in adapter.keys()), "the head must be saved with the adapter"

    reloaded_base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        assert not torch.allclose(reloaded_base.eval()(**batch).logits, expected), "the adapter must matter"
    reloaded = PeftModel.from_pretrained(reloaded_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-6, rtol=1e-5)
        merged = reloaded.merge_and_unload()
        assert type(merged) is LastTokenClassifierForSequenceClassification
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-5, rtol=1e-4)
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()(**batch).logits
    torch.testing.assert_close(final, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_lm_dirs, tokenizer, texts, gradient_checkpointing):
    torch.manual_seed(0)
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dirs["llama", "pad"], labels=LABELS, tokenizer=tokenizer
    )
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = torch.tensor([0, 1, 2])
    model.train()
    model(**batch, labels=labels).loss.backward()
    reference = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        assert model.model.gradient_checkpointing
    model(**batch, labels=labels).loss.backward()
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, reference)


@pytest.mark.parametrize("launch", ["fsdp", "deepspeed_zero3", "single"])
def test_sharded_qlora_keeps_one_parameter_dtype(launch, tiny_lm_dirs, tokenizer, tmp_path, monkeypatch):
    """Under FSDP / ZeRO-3 (as `accelerate launch` announces them) a 4-bit backbone is stored, loaded and wrapped
    in one dtype, since sharding flattens uniform tensors: no float32 upcast of norms, head or adapters. A single
    process keeps PEFT's k-bit preparation (float32 norms and head)."""
    from hf_clf_ext.last_token.adapters import default_lora_config, prepare_peft

    from testing_utils import arguments, synthetic

    args = arguments(tmp_path, quantization="4bit", gradient_checkpointing=True)
    if launch == "fsdp":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    elif launch == "deepspeed_zero3":  # set after the arguments, which would import DeepSpeed (not installed here)
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    config = args.bnb_config()
    model = LastTokenClassifierForSequenceClassification.from_backbone(
        tiny_lm_dirs["llama", "pad"], labels=["a", "b", "c"], tokenizer=tokenizer, quantization_config=config,
        **({"dtype": args.sharded_qlora_dtype()} if launch != "single" else {}))
    model = prepare_peft(model, args, default_lora_config(args))
    dtypes = {param.dtype for param in model.parameters()}
    quantized = [p for p in model.parameters() if p.__class__.__name__ == "Params4bit"]
    if launch == "single":
        assert config.bnb_4bit_quant_storage == torch.uint8 and torch.float32 in dtypes
        return
    assert config.bnb_4bit_quant_storage == torch.bfloat16 and dtypes == {torch.bfloat16}
    with pytest.raises(ValueError, match=r"loads every parameter in torch.bfloat16.*got dtype='float16'"):
        args.with_sharded_dtype({"dtype": "float16"})
    assert quantized and all(p.dtype == torch.bfloat16 for p in quantized)
    assert model.base_model.model.model.is_gradient_checkpointing
    # It still trains: the adapters and the head get gradients.
    batch = tokenizer(list(synthetic(4, seed=0)["text"]), padding=True, return_tensors="pt")
    model.train()
    loss = model(**batch, labels=torch.tensor([0, 1, 2, 0])).loss
    loss.backward()
    trained = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert any("lora_A" in name for name in trained) and any("score" in name for name in trained)
