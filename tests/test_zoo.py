import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from hf_salt.zoo import PRESETS, build_config, build_model

SMALL = [n for n in PRESETS if n.endswith("-tiny") or n in {"llama-small", "llama-tiny-2x", "gpt2-small"}]


@pytest.mark.parametrize("name", SMALL)
def test_preset_builds_trains_and_round_trips(name, tmp_path):
    model = build_model(name, vocab_size=256, seed=0, attn_implementation="eager")
    ids = torch.randint(2, 256, (2, 12))
    if PRESETS[name].seq2seq:
        batch = {"input_ids": ids, "labels": torch.randint(2, 256, (2, 5))}
        auto = AutoModelForSeq2SeqLM
    else:
        batch = {"input_ids": ids, "labels": ids}
        auto = AutoModelForCausalLM
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.save_pretrained(tmp_path)
    reloaded = auto.from_pretrained(tmp_path, attn_implementation="eager").eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)


def test_seed_makes_init_reproducible():
    a, b = build_model("llama-tiny", seed=3), build_model("llama-tiny", seed=3)
    c = build_model("llama-tiny", seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("llama-40m", 35e6, 45e6), ("llama-160m", 140e6, 170e6), ("llama-1b", 0.9e9, 1.2e9)],
)
def test_gpu_scale_presets_have_their_advertised_size(name, low, high):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(name))
    assert low < model.num_parameters() < high


def test_width_families_share_depth_and_head_size():
    small, wide = build_config("llama-small"), build_config("llama-small-2x")
    assert wide.hidden_size == 2 * small.hidden_size and wide.intermediate_size == 2 * small.intermediate_size
    assert wide.head_dim == small.head_dim and wide.num_hidden_layers == small.num_hidden_layers
    assert wide.num_key_value_heads == 2 * small.num_key_value_heads


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean llama-tiny"):
        build_config("llama-tinny")


def test_one_loader_for_presets_and_folders(tmp_path):
    """`load_model`: a preset is built (seeded, in the dtype asked), a folder loads with the Auto class its
    config names, a folder smaller than the tokenizer or an unknown name is refused naming the flag."""
    import torch

    from hf_salt.zoo import load_model, parse_dtype

    a = load_model("llama-tiny", vocab_size=128, seed=3, dtype="bfloat16")
    b = build_model("llama-tiny", vocab_size=128, seed=3).to(torch.bfloat16)
    assert a.dtype == torch.bfloat16 and all(
        torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())
    )
    build_model("t5-tiny", vocab_size=128, seed=0).save_pretrained(tmp_path / "t5")
    t5 = load_model(str(tmp_path / "t5"), vocab_size=128)
    assert t5.config.is_encoder_decoder and type(t5).__name__ == "T5ForConditionalGeneration"
    with pytest.raises(ValueError, match="has 128 embeddings but the tokenizer has 200"):
        load_model(str(tmp_path / "t5"), vocab_size=200)
    with pytest.raises(ValueError, match="--teacher 'nope' is neither a zoo preset"):
        load_model("nope", flag="--teacher")
    assert parse_dtype("torch.float16") is torch.float16 and parse_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="--dtype must be one of auto, float32, bfloat16, float16"):
        parse_dtype("half", "--dtype")
