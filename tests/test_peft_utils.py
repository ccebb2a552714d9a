"""`apply_peft`: TRL-style PEFT wrapping with errors for set-ups the fused KD loss would silently ignore."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import BertConfig, BertLMHeadModel, LlamaConfig, LlamaForCausalLM, TrainingArguments

from hf_salt.peft_utils import apply_peft, output_layer_names


def _llama(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).to(dtype)


def _args(tmp_path, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kwargs)


def _adapter_modules(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def test_lora_on_decoder_layers_with_fused_loss(tmp_path) -> None:
    model = _llama()
    out = apply_peft(
        model,
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
        args=_args(tmp_path),
        reads_output_layer=True,
    )
    assert isinstance(out, PeftModel)
    adapted = _adapter_modules(out)
    assert len(adapted) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in adapted)
    trainable = {n for n, p in out.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not out.get_output_embeddings().weight.requires_grad


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
        LoraConfig(r=4, target_modules=r".*(q_proj|lm_head)"),
        LoraConfig(r=4, target_modules=[], target_parameters=["lm_head.weight"]),
    ],
    ids=["names", "regex", "target_parameters"],
)
def test_adapter_on_output_layer_is_refused_before_any_change(tmp_path, config) -> None:
    model = _llama()
    with pytest.raises(ValueError, match="output layer 'lm_head'.*fused KD loss reads that layer's weight"):
        apply_peft(model, config, args=_args(tmp_path), reads_output_layer=True)
    assert _adapter_modules(model) == []  # the user's model was not modified


def test_adapter_on_output_layer_allowed_without_fused_loss(tmp_path) -> None:
    out = apply_peft(
        _llama(),
        LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
        args=_args(tmp_path),
        reads_output_layer=False,
    )
    assert isinstance(out.get_output_embeddings(), BaseTunerLayer)


def test_output_layer_found_by_get_output_embeddings(tmp_path) -> None:
    """Not every family calls it lm_head: BERT's LM head is cls.predictions.decoder."""
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        is_decoder=True,
    )
    model = BertLMHeadModel(config)
    assert output_layer_names(model) == ["cls.predictions.decoder"]
    with pytest.raises(ValueError, match="'cls.predictions.decoder'"):
        apply_peft(
            model,
            LoraConfig(r=4, target_modules=["query", "decoder"]),
            args=_args(tmp_path),
            reads_output_layer=True,
        )
    assert _adapter_modules(model) == []
    out = apply_peft(
        model, LoraConfig(r=4, target_modules=["query"]), args=_args(tmp_path), reads_output_layer=True
    )
    assert output_layer_names(out) == ["base_model.model.cls.predictions.decoder"]


def test_modules_to_save_output_layer_is_fine(tmp_path) -> None:
    """Training the whole head is visible to the fused loss: `.weight` is the trainable copy."""
    model = _llama()
    original = model.lm_head.weight
    out = apply_peft(
        model,
        LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]),
        args=_args(tmp_path),
        reads_output_layer=True,
    )
    weight = out.get_output_embeddings().weight
    assert weight.requires_grad and weight is not original
    assert torch.equal(weight, original)


def test_prompt_learning_with_fused_loss_is_refused(tmp_path) -> None:
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    with pytest.raises(ValueError, match="prompt learning"):
        apply_peft(_llama(), config, args=_args(tmp_path), reads_output_layer=True)
    assert isinstance(apply_peft(_llama(), config, args=_args(tmp_path), reads_output_layer=False), PeftModel)


def test_config_type_and_peft_model_guards(tmp_path) -> None:
    model = _llama()
    assert apply_peft(model, None, args=_args(tmp_path), reads_output_layer=True) is model
    with pytest.raises(TypeError, match="must be a peft.PeftConfig"):
        apply_peft(model, {"r": 4}, args=_args(tmp_path), reads_output_layer=True)
    peft_model = get_peft_model(_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already a PeftModel"):
        apply_peft(
            peft_model,
            LoraConfig(r=4, target_modules=["v_proj"]),
            args=_args(tmp_path),
            reads_output_layer=False,
        )
    assert apply_peft(peft_model, None, args=_args(tmp_path), reads_output_layer=True) is peft_model


def test_existing_peft_model_with_head_adapter_is_refused(tmp_path) -> None:
    peft_model = get_peft_model(_llama(), LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="adapter on its output layer"):
        apply_peft(peft_model, None, args=_args(tmp_path), reads_output_layer=True)


def test_gradient_checkpointing_makes_inputs_require_grad(tmp_path) -> None:
    ids = torch.tensor([[1, 2, 3]])
    plain = apply_peft(
        _llama(), LoraConfig(r=4, target_modules=["q_proj"]), args=_args(tmp_path), reads_output_layer=True
    )
    assert not plain.get_input_embeddings()(ids).requires_grad
    args = _args(tmp_path, gradient_checkpointing=True)
    out = apply_peft(_llama(), LoraConfig(r=4, target_modules=["q_proj"]), args=args, reads_output_layer=True)
    assert out.get_input_embeddings()(ids).requires_grad  # frozen embeddings still feed the checkpointed LoRA


def test_zero3_keeps_adapter_dtype(tmp_path, monkeypatch) -> None:
    """PEFT autocasts adapters to fp32 by default; under ZeRO-3 they must keep the model's dtype."""
    config = LoraConfig(r=4, target_modules=["q_proj"])
    out = apply_peft(_llama(torch.bfloat16), config, args=_args(tmp_path), reads_output_layer=True)
    lora_dtypes = {p.dtype for n, p in out.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.float32}

    monkeypatch.setattr("transformers.integrations.deepspeed.is_deepspeed_zero3_enabled", lambda: True)
    out = apply_peft(
        _llama(torch.bfloat16),
        LoraConfig(r=4, target_modules=["q_proj"]),
        args=_args(tmp_path),
        reads_output_layer=True,
    )
    lora_dtypes = {p.dtype for n, p in out.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.bfloat16}


def test_adapters_start_from_args_seed(tmp_path) -> None:
    """Same seed -> same LoRA init whatever the global RNG went through (1 vs N processes), RNG untouched."""
    config = lambda: LoraConfig(r=4, target_modules=["q_proj"])  # noqa: E731
    torch.manual_seed(123)
    a = apply_peft(_llama(), config(), args=_args(tmp_path, seed=7), reads_output_layer=True)
    model = _llama()
    torch.rand(5)  # e.g. data shuffling after the model was built
    state = torch.random.get_rng_state()
    b = apply_peft(model, config(), args=_args(tmp_path, seed=7), reads_output_layer=True)
    assert torch.equal(torch.random.get_rng_state(), state)
    c = apply_peft(_llama(), config(), args=_args(tmp_path, seed=8), reads_output_layer=True)
    lora_a = lambda m: [p for n, p in m.named_parameters() if "lora_A" in n]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(lora_a(a), lora_a(b)))
    assert not torch.equal(lora_a(a)[0], lora_a(c)[0])
