"""Tiny random models of any registered causal-LM type, built from the default config, shrunk generically.

The model-type matrices (``hypercloning_coverage.py`` and ``salt_matrix.py`` beside this file, run by
``tests/test_hypercloning_matrix.py`` and ``tests/test_salt_matrix.py``) build one of these per model type; some
tests build them too. Project tooling, not shipped in the wheel.
Default configs are often full size; every width, depth, vocabulary, expert and state field found in the
config (and its sub-configs) is shrunk so that each model builds in milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, LAYERS = 32, 4, 2, 8, 48, 96, 2

# key -> tiny value, applied wherever a config (or sub-config) has the key
_TINY: dict[str, Any] = {
    # width
    **dict.fromkeys(
        (
            "hidden_size",
            "n_embd",
            "d_model",
            "embed_dim",
            "n_embed",
            "model_dim",
            "word_embed_proj_dim",
            "embedding_dim",
            "emb_dim",
        ),
        HIDDEN,
    ),
    **dict.fromkeys(("embedding_size", "hidden_size_per_layer_input"), HIDDEN),
    **dict.fromkeys(
        (
            "intermediate_size",
            "ffn_dim",
            "n_inner",
            "ffn_hidden_size",
            "decoder_ffn_dim",
            "encoder_ffn_dim",
            "d_ff",
            "dim_ff",
            "d_inner",
            "inner_hidden_size",
            "filter_size",
        ),
        FFN,
    ),
    **dict.fromkeys(
        (
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "expert_intermediate_size",
            "expert_ffn_hidden_size",
            "moe_ffn_hidden_size",
            "shared_intermediate_size",
        ),
        24,
    ),
    **dict.fromkeys(
        (
            "num_attention_heads",
            "n_head",
            "num_heads",
            "n_heads",
            "decoder_attention_heads",
            "encoder_attention_heads",
        ),
        HEADS,
    ),
    **dict.fromkeys(("num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num"), KV_HEADS),
    **dict.fromkeys(("head_dim", "d_head"), HEAD_DIM),
    **dict.fromkeys(("rotary_dim", "rotary_emb_base_dim"), 4),
    # depth
    **dict.fromkeys(
        (
            "num_hidden_layers",
            "n_layer",
            "num_layers",
            "n_layers",
            "decoder_layers",
            "encoder_layers",
            "num_decoder_layers",
        ),
        LAYERS,
    ),
    # vocabulary and positions
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input", "encoder_hash_byte_group_vocab"), VOCAB),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"), 64),
    # mixture of experts
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token", "moe_k"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("n_group", "num_expert_group", "topk_group"), 1),
    # multi-head latent attention
    **{"q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 8},
    # state-space layers
    **dict.fromkeys(("state_size", "ssm_state_size", "mamba_d_state", "d_state"), 8),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads", "n_mamba_heads"), 4),
    **dict.fromkeys(("mamba_d_head", "mamba_head_dim", "mamba_headdim"), 16),
    **dict.fromkeys(("n_groups", "mamba_n_groups", "mamba_ngroups"), 2),
    "mamba_d_ssm": 64,
    "time_step_rank": 4,
    # windows and chunks
    **dict.fromkeys(("sliding_window", "attention_window", "local_window_size"), 8),
}


_FILL_NONE = {"num_key_value_heads", "n_routed_experts", "num_experts_per_tok", "n_shared_experts"}


def _overrides(defaults: dict[str, Any]) -> dict[str, Any]:
    """Tiny values for the width/depth/vocabulary fields present in a config's ``to_dict()``."""
    out: dict[str, Any] = {}
    for key, value in defaults.items():
        if isinstance(value, dict) and (
            "model_type" in value or "hidden_size" in value or "vocab_size" in value
        ):
            out[key] = {**value, **_overrides(value)}
            continue
        tiny = _TINY.get(key)
        if tiny is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[key] = min(value, tiny) if key in ("num_experts_per_tok", "top_k", "moe_topk") else tiny
        elif value is None and key in _FILL_NONE:
            out[key] = tiny
    if "qk_rope_head_dim" in out:  # multi-head latent attention: head_dim is the rope part
        if "head_dim" in defaults:
            out["head_dim"] = out["qk_rope_head_dim"]
        if "num_key_value_heads" in defaults:
            out["num_key_value_heads"] = out.get("num_attention_heads", HEADS)  # MLA repeats no kv heads
        if "qk_head_dim" in defaults:
            out["qk_head_dim"] = out["qk_rope_head_dim"] + out.get("qk_nope_head_dim", 0)
    ssm_heads = out.get("num_heads") if "expand" in defaults and "state_size" in defaults else None
    if ssm_heads and "head_dim" in defaults:  # Mamba-2: heads x head_dim == expand x hidden
        out["head_dim"] = int(defaults["expand"]) * HIDDEN // ssm_heads
    if "is_decoder" in defaults:
        out["is_decoder"] = True  # encoder-style models with a causal head attend causally
    vocab = out.get("vocab_size")
    if vocab:
        for key, value in defaults.items():
            if key.endswith(("token_id", "token_index")) and isinstance(value, int) and value >= vocab:
                out[key] = vocab - 1
    _shrink_layer_lists(defaults, out)
    if defaults.get("head_dim", 0) is None and "num_attention_heads" in out and "qk_rope_head_dim" not in out:
        out["head_dim"] = HEAD_DIM
    if isinstance(defaults.get("attention_types"), list):  # GPT-Neo: [[kinds, repeats]]
        out["attention_types"] = [[["global", "local"], max(1, out.get("num_layers", LAYERS) // 2)]]
    rope = defaults.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_theta") is None and "rope_type" in rope:
        out["rope_parameters"] = {**rope, "rope_theta": 10000.0}
    return out


def _shrink_layer_lists(defaults: dict[str, Any], out: dict[str, Any]) -> None:
    """Keep one layer of every kind and cut every per-layer list (and layer-indexed dict) to match."""
    key = next((k for k in ("num_hidden_layers", "num_layers", "n_layer") if k in out), None)
    old = defaults.get(key) if key else None
    if not isinstance(old, int) or old <= out[key]:
        return
    types = next(
        (
            defaults[k]
            for k in ("layer_types", "layers_block_type", "attention_layers")
            if isinstance(defaults.get(k), list)
        ),
        None,
    )
    keep: list[int] = []
    if types and len(types) == old:
        seen: set = set()
        for i, t in enumerate(types):
            if repr(t) not in seen:
                seen.add(repr(t))
                keep.append(i)
    for i in range(old):
        if len(keep) >= max(out[key], len(keep)):
            break
        if i not in keep:
            keep.append(i)
    keep = sorted(keep)
    out[key] = len(keep)
    for k, v in defaults.items():
        if isinstance(v, list) and len(v) == old:
            picked = [v[i] for i in keep]
            if k in _TINY and all(isinstance(x, int) for x in picked):
                picked = [_TINY[k]] * len(keep)
            out[k] = picked
        elif isinstance(v, dict) and v and all(isinstance(x, str) and x.isdigit() for x in v):
            remap = {str(i).zfill(len(next(iter(v)))): i_new for i_new, i in enumerate(keep)}
            out[k] = {
                str(remap[x]).zfill(len(x)): {kk: _TINY.get(kk, vv) for kk, vv in inner.items()}
                for x, inner in v.items()
                if x in remap and isinstance(inner, dict)
            }
        elif k.endswith("layer_ids") and isinstance(v, list):
            out[k] = [keep.index(i) for i in v if i in keep]


def tiny_config(model_type: str) -> PretrainedConfig:
    """The default config of ``model_type`` with every width/depth/vocabulary field made tiny."""
    defaults = AutoConfig.for_model(model_type).to_dict()
    config = AutoConfig.for_model(model_type, **_overrides(defaults))
    for c in [config, *(v for v in vars(config).values() if isinstance(v, PretrainedConfig))]:
        with contextlib.suppress(Exception):
            c._attn_implementation = "eager"
    if not hasattr(config, "pad_token_id"):
        config.pad_token_id = getattr(config.get_text_config(), "pad_token_id", None)
    return config


def randomise(model: PreTrainedModel, seed: int = 0) -> PreTrainedModel:
    """Large random weights, non-trivial norm gains and biases: a wrong rule shows up as an O(1) error."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                noise = torch.randn(p.shape, generator=g)
                p.copy_(noise * 0.1 if p.dim() > 1 else p + noise * 0.3)
    return model


def build_tiny(model_type: str, seed: int = 0) -> PreTrainedModel:
    """The causal LM of ``model_type``, from its shrunk default config, fp32, randomised, in eval mode."""
    config = tiny_config(model_type)
    torch.manual_seed(seed)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return randomise(model, seed).eval()
