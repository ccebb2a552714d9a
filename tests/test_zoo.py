import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from hf_salt.zoo import PRESETS, build_config, build_model, count_parameters

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
    assert low < count_parameters(model) < high


def test_width_families_share_depth_and_head_size():
    small, wide = build_config("llama-small"), build_config("llama-small-2x")
    assert wide.hidden_size == 2 * small.hidden_size and wide.intermediate_size == 2 * small.intermediate_size
    assert wide.head_dim == small.head_dim and wide.num_hidden_layers == small.num_hidden_layers
    assert wide.num_key_value_heads == 2 * small.num_key_value_heads


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean llama-tiny"):
        build_config("llama-tinny")
