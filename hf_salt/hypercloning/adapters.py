"""Per-family adapters: parameter names -> generic rules, config keys, final norm, depth layout.

An adapter only knows *names and layouts*; all the arithmetic lives in :mod:`rules`. To add a family,
build an :class:`Adapter` (usually by copying the closest one) and call :func:`register_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PretrainedConfig

from .rules import Rule, Sizes


@dataclass(frozen=True)
class Shape:
    """The source sizes an adapter reads from a config (head_dim is kept by cloning)."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    positions: int = 0
    embed_dim: int = 0  # OPT word_embed_proj_dim; 0 = same as hidden


def _linear(out: str, inp: str) -> Rule:
    return Rule("linear", out, inp)


def _vec(out: str) -> Rule:
    return Rule("vector", out)


COPY = Rule("copy")


@dataclass(frozen=True)
class Adapter:
    """Everything family-specific about growing a model; see the module docstring."""

    family: str
    model_types: tuple[str, ...]
    shape: Callable[[PretrainedConfig], Shape]
    rules: tuple[tuple[str, Rule], ...]  # first regex (re.search on the parameter name) wins
    set_sizes: Callable[[PretrainedConfig, Shape, int, int], None]  # write the grown sizes into a config copy
    final_norm: str  # regex for the norm right before the output head ("" if none)
    layer_pattern: str  # regex with groups (prefix, index, rest) for decoder-block parameters
    residual_outputs: tuple[str, ...]  # regexes on `rest`: zeroed in new depth blocks (exact identity)
    num_layers_key: str = "num_hidden_layers"
    norm_offset: float = 0.0  # 1.0 for Gemma's (1 + w) RMSNorm
    sqrt_embed_scale: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size)
    check_depth: Callable[[PretrainedConfig, str], None] | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def rule_for(self, name: str) -> Rule | None:
        for pattern, rule in self.rules:
            if re.search(pattern, name):
                return rule
        return None

    def sizes(self, s: Shape, n: int, m: int) -> Sizes:
        """Symbol table: source size and repeat count of every dimension kind."""
        kv_rep = 1 if (s.kv_heads == 1 and s.heads > 1) else n  # MQA keeps its single kv head
        e = s.embed_dim or s.hidden
        return {
            "d": (s.hidden, n),
            "f": (s.ffn, m),
            "q": (s.heads * s.head_dim, n),
            "kv": (s.kv_heads * s.head_dim, kv_rep),
            "qkv3": (3 * s.heads * s.head_dim, n),  # GPT-NeoX: per-head (H, 3, h) rows, tiled along heads
            "V": (s.vocab, 1),
            "P": (s.positions, 1),
            "e": (e, n if e == s.hidden else 1),  # OPT: a narrower word embedding is not widened
        }


# ---------------------------------------------------------------- Llama-style (Llama, Mistral, Qwen2/3, Gemma, Phi-3)
def _llama_shape(c: PretrainedConfig) -> Shape:
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return Shape(c.hidden_size, c.intermediate_size, heads, kv, head_dim, c.vocab_size)


def _llama_set(c: PretrainedConfig, s: Shape, n: int, m: int) -> None:
    c.hidden_size = s.hidden * n
    c.intermediate_size = s.ffn * m
    c.num_attention_heads = s.heads * n
    c.num_key_value_heads = s.kv_heads if (s.kv_heads == 1 and s.heads > 1) else s.kv_heads * n
    if hasattr(c, "head_dim"):
        c.head_dim = s.head_dim  # explicit: never re-derived from the wider hidden size


_LLAMA_RULES: tuple[tuple[str, Rule], ...] = (
    (r"embed_tokens\.weight$", Rule("embedding", "V", "d")),
    (r"(^|\.)lm_head\.weight$", Rule("head", "V", "d")),
    (r"self_attn\.q_proj\.weight$", _linear("q", "d")),
    (r"self_attn\.q_proj\.bias$", _vec("q")),
    (r"self_attn\.[kv]_proj\.weight$", _linear("kv", "d")),
    (r"self_attn\.[kv]_proj\.bias$", _vec("kv")),
    (r"self_attn\.qkv_proj\.weight$", _linear("q+kv+kv", "d")),  # Phi-3 fused [q; k; v]
    (r"self_attn\.qkv_proj\.bias$", _vec("q+kv+kv")),
    (r"self_attn\.o_proj\.weight$", _linear("d", "q")),
    (r"self_attn\.o_proj\.bias$", _vec("d")),
    (r"self_attn\.[qk]_norm\.weight$", COPY),  # Qwen3: per-head norm over head_dim, unchanged
    (r"mlp\.gate_up_proj\.weight$", _linear("f+f", "d")),  # Phi-3 fused [gate; up] -> [g; g; u; u]
    (r"mlp\.(gate|up)_proj\.weight$", _linear("f", "d")),
    (r"mlp\.(gate|up)_proj\.bias$", _vec("f")),
    (r"mlp\.down_proj\.weight$", _linear("d", "f")),
    (r"mlp\.down_proj\.bias$", _vec("d")),
    (r"norm\.weight$", _vec("d")),  # input/post_attention/pre_/post_feedforward layernorms and final norm
)
_LLAMA_LAYERS = r"^(.*\blayers\.)(\d+)\.(.*)$"
_LLAMA_RESIDUAL = (r"^self_attn\.o_proj\.", r"^mlp\.down_proj\.")
_LLAMA_FINAL = r"^(model\.)?norm\.weight$"


def _llama_like(family: str, model_types: tuple[str, ...], **kw) -> Adapter:
    return Adapter(
        family=family,
        model_types=model_types,
        shape=_llama_shape,
        rules=_LLAMA_RULES,
        set_sizes=_llama_set,
        final_norm=_LLAMA_FINAL,
        layer_pattern=_LLAMA_LAYERS,
        residual_outputs=_LLAMA_RESIDUAL,
        **kw,
    )


# ---------------------------------------------------------------- GPT-2
def _gpt2_shape(c: PretrainedConfig) -> Shape:
    return Shape(
        c.n_embd,
        c.n_inner or 4 * c.n_embd,
        c.n_head,
        c.n_head,
        c.n_embd // c.n_head,
        c.vocab_size,
        c.n_positions,
    )


def _gpt2_set(c: PretrainedConfig, s: Shape, n: int, m: int) -> None:
    c.n_embd, c.n_head, c.n_inner = s.hidden * n, s.heads * n, s.ffn * m


def _gpt2_depth(c: PretrainedConfig, mode: str) -> None:
    if getattr(c, "scale_attn_by_inverse_layer_idx", False) and mode == "interleave":
        raise ValueError(
            "This GPT-2 config sets scale_attn_by_inverse_layer_idx=True: interleaving new blocks would move "
            "existing blocks to new indices and change their attention scale. Use depth_mode='append'."
        )


_GPT2 = Adapter(
    family="gpt2",
    model_types=("gpt2",),
    shape=_gpt2_shape,
    rules=(
        (r"wte\.weight$", Rule("embedding", "V", "d")),
        (r"wpe\.weight$", Rule("embedding", "P", "d")),
        (r"(^|\.)lm_head\.weight$", Rule("head", "V", "d")),
        (r"attn\.c_attn\.weight$", Rule("conv1d", "q+q+q", "d")),  # Conv1D: weight is (in, out)
        (r"attn\.c_attn\.bias$", _vec("q+q+q")),
        (r"attn\.c_proj\.weight$", Rule("conv1d", "d", "q")),
        (r"mlp\.c_fc\.weight$", Rule("conv1d", "f", "d")),
        (r"mlp\.c_fc\.bias$", _vec("f")),
        (r"mlp\.c_proj\.weight$", Rule("conv1d", "d", "f")),
        (r"c_proj\.bias$", _vec("d")),
        (r"ln_(1|2|f)\.(weight|bias)$", _vec("d")),
    ),
    set_sizes=_gpt2_set,
    final_norm=r"(^|\.)ln_f\.(weight|bias)$",
    layer_pattern=r"^(.*\bh\.)(\d+)\.(.*)$",
    residual_outputs=(r"^attn\.c_proj\.", r"^mlp\.c_proj\."),
    num_layers_key="n_layer",
    check_depth=_gpt2_depth,
)


# ---------------------------------------------------------------- GPT-NeoX / Pythia
def _neox_shape(c: PretrainedConfig) -> Shape:
    h = c.hidden_size // c.num_attention_heads
    return Shape(
        c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_attention_heads, h, c.vocab_size
    )


def _neox_set(c: PretrainedConfig, s: Shape, n: int, m: int) -> None:
    c.hidden_size, c.intermediate_size, c.num_attention_heads = s.hidden * n, s.ffn * m, s.heads * n


_NEOX = Adapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    shape=_neox_shape,
    rules=(
        (r"embed_in\.weight$", Rule("embedding", "V", "d")),
        (r"(^|\.)(lm_head|embed_out)\.weight$", Rule("head", "V", "d")),
        (r"attention\.query_key_value\.weight$", _linear("qkv3", "d")),
        (r"attention\.query_key_value\.bias$", _vec("qkv3")),
        (r"attention\.dense\.weight$", _linear("d", "q")),
        (r"attention\.dense\.bias$", _vec("d")),
        (r"mlp\.dense_h_to_4h\.weight$", _linear("f", "d")),
        (r"mlp\.dense_h_to_4h\.bias$", _vec("f")),
        (r"mlp\.dense_4h_to_h\.weight$", _linear("d", "f")),
        (r"mlp\.dense_4h_to_h\.bias$", _vec("d")),
        (r"(layernorm|layer_norm)\.(weight|bias)$", _vec("d")),
    ),
    set_sizes=_neox_set,
    final_norm=r"^(gpt_neox\.)?final_layer_norm\.(weight|bias)$",
    layer_pattern=_LLAMA_LAYERS,
    residual_outputs=(r"^attention\.dense\.", r"^mlp\.dense_4h_to_h\."),
)


# ---------------------------------------------------------------- OPT
def _opt_shape(c: PretrainedConfig) -> Shape:
    h = c.hidden_size // c.num_attention_heads
    e = c.word_embed_proj_dim if c.word_embed_proj_dim != c.hidden_size else 0
    return Shape(
        c.hidden_size,
        c.ffn_dim,
        c.num_attention_heads,
        c.num_attention_heads,
        h,
        c.vocab_size,
        c.max_position_embeddings + 2,  # OPTLearnedPositionalEmbedding: offset 2
        e,
    )


def _opt_set(c: PretrainedConfig, s: Shape, n: int, m: int) -> None:
    if not s.embed_dim:
        c.word_embed_proj_dim = s.hidden * n  # no projection: the embedding grows with the model
    c.hidden_size, c.ffn_dim, c.num_attention_heads = s.hidden * n, s.ffn * m, s.heads * n


def _opt_depth(c: PretrainedConfig, mode: str) -> None:
    if not c.do_layer_norm_before:
        raise ValueError(
            "Depth growth needs a pre-norm block (x + f(norm(x))); this OPT config has do_layer_norm_before=False "
            "(post-norm, like opt-350m), where a zero block is not an identity. Grow width only."
        )


_OPT = Adapter(
    family="opt",
    model_types=("opt",),
    shape=_opt_shape,
    rules=(
        (r"embed_tokens\.weight$", Rule("embedding", "V", "e")),
        (r"embed_positions\.weight$", Rule("embedding", "P", "d")),
        (r"(^|\.)lm_head\.weight$", Rule("head", "V", "e")),
        (r"project_in\.weight$", _linear("d", "e")),
        (r"project_out\.weight$", _linear("e", "d")),
        (r"self_attn\.[qkv]_proj\.weight$", _linear("q", "d")),
        (r"self_attn\.[qkv]_proj\.bias$", _vec("q")),
        (r"self_attn\.out_proj\.weight$", _linear("d", "q")),
        (r"self_attn\.out_proj\.bias$", _vec("d")),
        (r"fc1\.weight$", _linear("f", "d")),
        (r"fc1\.bias$", _vec("f")),
        (r"fc2\.weight$", _linear("d", "f")),
        (r"fc2\.bias$", _vec("d")),
        (r"layer_norm\.(weight|bias)$", _vec("d")),
    ),
    set_sizes=_opt_set,
    final_norm=r"(^|\.)decoder\.final_layer_norm\.(weight|bias)$",
    layer_pattern=_LLAMA_LAYERS,
    residual_outputs=(r"^self_attn\.out_proj\.", r"^fc2\."),
    check_depth=_opt_depth,
)


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter: Adapter) -> None:
    """Make ``clone`` accept every config whose ``model_type`` is in ``adapter.model_types``."""
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter


for _a in (
    _llama_like("llama", ("llama",)),
    _llama_like("mistral", ("mistral",)),
    _llama_like("qwen2", ("qwen2",)),
    _llama_like("qwen3", ("qwen3",)),
    _llama_like("gemma", ("gemma",), norm_offset=1.0, sqrt_embed_scale=True),
    _llama_like("gemma2", ("gemma2",), norm_offset=1.0, sqrt_embed_scale=True),
    _llama_like("phi3", ("phi3",)),
    _GPT2,
    _NEOX,
    _OPT,
):
    register_adapter(_a)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(config: PretrainedConfig) -> Adapter:
    """The adapter for ``config.model_type``, or a NotImplementedError that says how to add one."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise NotImplementedError(
            f"HyperCloning does not support model_type {model_type!r} ({type(config).__name__}) yet. "
            f"Supported families: {', '.join(supported_model_types())}. To add one, build an "
            "hf_salt.hypercloning.Adapter (parameter-name regexes -> Rule, the config size keys, the final norm, "
            "the decoder-layer pattern) - usually by copying the closest family - and pass it to "
            "hf_salt.hypercloning.register_adapter(); see docs/hypercloning.md, 'Adding a family'."
        )
    return _REGISTRY[model_type]
