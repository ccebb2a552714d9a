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

from hf_salt.hypercloning.config_growth import EMBED_PROJ, EXPERT_FFN, FFN, FIELD_ROLES, GROUPS, HEADS, WIDTH

HIDDEN, N_HEADS, KV_HEADS, HEAD_DIM, FFN_SIZE, VOCAB, LAYERS = 32, 4, 2, 8, 48, 96, 2

# the tiny size of each field HyperCloning grows, by its role in the growth's own table (FIELD_ROLES)
_BY_ROLE = {
    WIDTH: HIDDEN,
    EMBED_PROJ: HIDDEN,
    FFN: FFN_SIZE,
    EXPERT_FFN: 24,
    HEADS: N_HEADS,
    GROUPS: KV_HEADS,
}
# grown fields left as the config makes them: derived from the tiny hidden size (RWKV, Zamba: 2 x hidden) or the
# output width of a vision tower that a text forward never runs
_LEFT_TO_THE_CONFIG = {"attention_hidden_size", "projector_output_dim", "out_hidden_size"}

# key -> tiny value, applied wherever a config (or sub-config) has the key
_TINY: dict[str, Any] = {
    **{key: _BY_ROLE[role] for key, role in FIELD_ROLES.items() if key not in _LEFT_TO_THE_CONFIG},
    "mamba_d_ssm": 2 * HIDDEN,  # Falcon-H1's Mamba width: its heads x head size below (4 x 16)
    # sizes the growth keeps
    "hidden_size_per_layer_input": HIDDEN,  # Gemma 3n / 4 per-layer inputs
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
    "o_lora_rank": 16,  # DeepSeek-V4's grouped output projection rank (kept by the growth)
    # state-space layers
    **dict.fromkeys(("state_size", "ssm_state_size", "mamba_d_state", "d_state"), 8),
    **dict.fromkeys(("mamba_d_head", "mamba_head_dim", "mamba_headdim"), 16),
    "time_step_rank": 4,
    # windows and chunks
    **dict.fromkeys(("sliding_window", "attention_window", "local_window_size"), 8),
}
# types the generic shrinking gets wrong or leaves large: the fields given here (for Dory the default layer list
# is dropped, so the config makes a consistent one)
_TYPE_FIXES: dict[str, dict[str, Any]] = {
    # Dory: input + recurrent + output layer counts must add up to num_hidden_layers
    "dory": {"num_hidden_layers": 4, "n_input_layers": 1, "n_recurrent_layers": 2, "n_output_layers": 1},
    # Kimi-Linear: 32 delta-rule heads of 128, sizes the growth keeps (Bailing derives the same fields itself)
    "kimi_linear": {"linear_head_dim": HEAD_DIM, "linear_num_heads": N_HEADS},
    # Gemma 3n: the last 15 of 35 layers reuse earlier layers' KV caches; two layers (one sliding, one full) leave
    # no layer of each kind to share from, so none share (four layers with two shared also grow, but the fp32
    # rounding of their deeper altup stack reaches 2e-5 on logits of scale 30, above the matrix's 1e-5)
    "gemma3n_text": {"num_kv_shared_layers": 0},
    # DeepSeek-V4: its sparse-attention indexer (64 heads of 128, sizes the growth keeps) made tiny too
    "deepseek_v4": {"index_n_heads": N_HEADS, "index_head_dim": HEAD_DIM},
    # DBRX: its attention reads attn_config.rope_theta (the default sub-config has none) and clamps q/k/v with
    # clip_qkv (None fails there): DBRX's own 8
    "dbrx": {"attn_config": {"rope_theta": 10000.0, "clip_qkv": 8.0}},
    # LFM2-MoE: no default layer list (the model indexes it): one conv and one attention layer, the first dense
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 1},
    # Cohere Compass: RoPE parameters keyed by layer type, empty by default
    "cohere_compass_text": {
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    },
    # Zamba: the shared transformer is tied across its hybrid layers, so it needs two of them
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},
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
            out["num_key_value_heads"] = out.get("num_attention_heads", N_HEADS)  # MLA repeats no kv heads
        if "qk_head_dim" in defaults:
            out["qk_head_dim"] = out["qk_rope_head_dim"] + out.get("qk_nope_head_dim", 0)
    keys, values = defaults.get("linear_num_key_heads"), defaults.get("linear_num_value_heads")
    if "linear_num_value_heads" in out and isinstance(keys, int) and keys and isinstance(values, int):
        # value heads per key head as the type has them (Qwen3-Next: 2; with 1, its clone is refused)
        out["linear_num_value_heads"] = out.get("linear_num_key_heads", N_HEADS) * max(1, values // keys)
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


def _merge(into: dict[str, Any], fixes: dict[str, Any]) -> None:
    """``into.update(fixes)``, merging nested dicts (a sub-config's or a layer's fixes) key by key."""
    for key, value in fixes.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = dict(into[key])
            _merge(into[key], value)
        else:
            into[key] = value


def tiny_config(model_type: str) -> PretrainedConfig:
    """The default config of ``model_type`` with every width/depth/vocabulary field made tiny."""
    overrides = _overrides(AutoConfig.for_model(model_type).to_dict())
    fixes = _TYPE_FIXES.get(model_type, {})
    if "num_hidden_layers" in fixes:
        overrides.pop("layer_types", None)
    _merge(overrides, fixes)
    config = AutoConfig.for_model(model_type, **overrides)
    for c in [config, *(v for v in vars(config).values() if isinstance(v, PretrainedConfig))]:
        with contextlib.suppress(Exception):
            c._attn_implementation = "eager"
    if getattr(config, "languages", None) and vars(config).get("default_language", 0) is None:
        config.default_language = config.languages[0]  # X-MOD: one adapter per language, chosen in the config
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
