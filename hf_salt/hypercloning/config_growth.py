"""The grown config: width fields x n, FFN fields x m, head counts x n at the same head size.

Works on any config by field name (the same names transformers uses across families), recursing into
sub-configs (``text_config``, ``attn_config``, ...). Vision and audio towers are left alone: their
outputs reach the text model through a projector, whose output side grows with the hidden size.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import PretrainedConfig

# One table of the config fields HyperCloning grows, by what each one sizes: `grow_config` multiplies them by
# their role, and the tiny models of the project's matrices (benchmarks/tiny_models.py) shrink the same fields by
# the same roles, so the list of widths is written once.
WIDTH, EMBED_PROJ, FFN, EXPERT_FFN, HEADS, GROUPS = (
    "width",
    "embed_proj",
    "ffn",
    "expert_ffn",
    "heads",
    "groups",
)
FIELD_ROLES: dict[str, str] = {
    # hidden sizes: x n
    **dict.fromkeys(
        (
            "hidden_size",
            "n_embd",
            "d_model",
            "embed_dim",
            "n_embed",
            "model_dim",
            "embedding_dim",
            "embedding_size",
            "attention_hidden_size",
            "mamba_d_ssm",
            "projector_output_dim",
            "out_hidden_size",
            "emb_dim",  # XLM's hidden size
            "lru_width",  # RecurrentGemma's recurrence width, cut into one block per head
        ),
        WIDTH,
    ),
    # an embedding projection: x n only where it equals the hidden size (OPT without a projection)
    "word_embed_proj_dim": EMBED_PROJ,
    # MLP widths: x m
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
            "d_inner",  # XLNet's
            "inner_hidden_size",
            "filter_size",
            "intermediate_size_mlp",
        ),
        FFN,
    ),
    # expert and shared-expert MLP widths: x m
    **dict.fromkeys(
        (
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "expert_intermediate_size",
            "expert_ffn_hidden_size",
            "moe_ffn_hidden_size",
            "shared_intermediate_size",
        ),
        EXPERT_FFN,
    ),
    # head counts: x n (the head size is kept, so every 1/sqrt(head_dim) and RoPE table stays the same)
    **dict.fromkeys(
        (
            "num_attention_heads",
            "n_head",
            "num_heads",
            "n_heads",
            "decoder_attention_heads",
            "encoder_attention_heads",
            "mamba_n_heads",
            "mamba_num_heads",
            "n_mamba_heads",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "num_attention_heads_per_layer",  # Laguna: one head count per layer
            "o_groups",  # DeepSeek-V4: output groups of heads; n x the groups keeps each group's heads
        ),
        HEADS,
    ),
    # kv-head and group counts: x n, except a single shared one (MQA, one SSM group) which stays single
    **dict.fromkeys(
        (
            "num_key_value_heads",
            "n_head_kv",
            "num_kv_heads",
            "multi_query_group_num",
            "kv_n_heads",
            "num_query_groups",
            "n_groups",
            "mamba_n_groups",
            "mamba_ngroups",
        ),
        GROUPS,
    ),
}


def _fields(*roles: str) -> frozenset[str]:
    return frozenset(key for key, role in FIELD_ROLES.items() if role in roles)


WIDTH_KEYS = _fields(WIDTH)
FFN_KEYS = _fields(FFN, EXPERT_FFN)
HEAD_KEYS = _fields(HEADS)
GROUP_KEYS = _fields(GROUPS)
EMBED_PROJ_KEYS = _fields(EMBED_PROJ)
# sizes computed from the hidden size when left unset: written explicitly so they do not grow by n
KEEP_DERIVED = ("head_dim", "time_step_rank", "dt_rank")
TEXT_SUBCONFIGS = ("text_config", "attn_config", "ffn_config", "decoder", "language_config", "llm_config")
SKIP_SUBCONFIGS = (
    "vision_config",
    "audio_config",
    "vision_tower",
    "audio_tower",
    "encoder",
    "patcher_config",
)


def _times(value: Any, k: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value * k
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [v * k for v in value]
    return value


def _grow_one(config: PretrainedConfig, n: int, m: int) -> None:
    fields = dict(vars(config))
    hidden = next(
        (fields[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(fields.get(k), int)), 0
    )
    heads = next((fields[k] for k in sorted(HEAD_KEYS) if isinstance(fields.get(k), int)), 0)
    for key in KEEP_DERIVED:
        value = fields.get(key)
        if value == "auto" and key == "time_step_rank" and hidden:
            config.time_step_rank = math.ceil(hidden / 16)
        elif value is None and key == "head_dim" and hidden and heads and "head_dim" in fields:
            config.head_dim = hidden // heads
    for key, value in fields.items():
        if key in WIDTH_KEYS:
            setattr(config, key, _times(value, n))
        elif key in FFN_KEYS:
            setattr(config, key, _times(value, m))
        elif key in HEAD_KEYS:
            setattr(config, key, _times(value, n))
        elif key in GROUP_KEYS and not (value == 1 and heads > 1):
            setattr(config, key, _times(value, n))
    if "n_inner" in fields and fields["n_inner"] is None and hidden:
        config.n_inner = 4 * hidden * m  # GPT-2 style: None means 4 x hidden
    for key in EMBED_PROJ_KEYS:  # OPT without a projection: the embedding grows with the hidden size
        if hidden and fields.get(key) == hidden:
            setattr(config, key, hidden * n)


def grow_config(config: PretrainedConfig, n: int, m: int) -> PretrainedConfig:
    """A deep copy of ``config`` with the width fields grown (its text sub-configs too)."""
    grown = copy.deepcopy(config)
    _grow_one(grown, n, m)
    for key, value in vars(grown).items():
        if isinstance(value, PretrainedConfig) and key not in SKIP_SUBCONFIGS:
            _grow_one(value, n, m)
    return grown


def size_atoms(config: PretrainedConfig, n: int, m: int) -> list[tuple[int, int]]:
    """(source size, repeat count) of every width the config names: the pieces a fused axis is made of."""
    atoms: set[tuple[int, int]] = set()
    configs = [config] + [
        v for k, v in vars(config).items() if isinstance(v, PretrainedConfig) and k not in SKIP_SUBCONFIGS
    ]
    for c in configs:
        f = vars(c)
        hidden = next((f[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(f.get(k), int)), 0)
        heads = next((f[k] for k in sorted(HEAD_KEYS) if isinstance(f.get(k), int)), 0)
        head_dim = (
            f.get("head_dim") if isinstance(f.get("head_dim"), int) else (hidden // heads if heads else 0)
        )
        for key, value in f.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                continue
            if key in WIDTH_KEYS or key in HEAD_KEYS:
                atoms.add((value, n))
            elif key in FFN_KEYS:
                atoms.add((value, m))
            elif key in GROUP_KEYS:
                rep = 1 if (value == 1 and heads > 1) else n
                atoms.add((value, rep))
                if head_dim:
                    atoms.add((value * head_dim, rep))
                for state_key in ("state_size", "ssm_state_size", "mamba_d_state", "d_state"):
                    if isinstance(f.get(state_key), int):
                        atoms.add((value * f[state_key], rep))  # Mamba-2 B / C per group
            elif key.endswith(("_dim", "_rank", "state_size", "d_state", "_size")) and value < 10_000:
                atoms.add((value, 1))  # a size that does not grow (head_dim, ranks, state size)
        if heads and head_dim:
            atoms.add((heads * head_dim, n))
            atoms.add((head_dim, 1))  # one head (a single shared kv head)
        if "expand" in f and hidden and isinstance(f.get("expand"), int):
            atoms.add((f["expand"] * hidden, n))  # Mamba's inner width
    return sorted(atoms)
