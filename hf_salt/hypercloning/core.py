"""HyperCloning: grow a trained causal LM into a wider (and optionally deeper) one, same function.

Reference: Samragh et al., "Scaling Smart: Accelerating Large Language Model Pre-training with Small
Model Initialization", arXiv 2409.12903 (2024). Our own implementation: it works from the config and the
state dict (never from attention-module attributes), builds the destination with empty weights and
assigns the grown tensors, so peak memory is source + destination.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import re
import warnings
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .adapters import Adapter, Shape, get_adapter
from .rules import apply_rule

DepthMode = Literal["interleave", "append"]


# ---------------------------------------------------------------- validation (before any allocation)
def _check_multiplier(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        if isinstance(value, float) and value.is_integer() and value >= 1:
            return int(value)
        raise ValueError(
            f"{name} must be a positive integer (HyperCloning repeats every vector an integer number of times), "
            f"got {value!r}. Fractional growth cannot preserve the function exactly."
        )
    return int(value)


def _check_model(model: Any) -> None:
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"Expected a transformers PreTrainedModel, got {type(model).__name__}.")
    if (
        getattr(model, "is_quantized", False)
        or getattr(model.config, "quantization_config", None) is not None
    ):
        raise ValueError(
            "Cannot HyperClone a quantized model: its weights are not plain floating-point tensors. Load the "
            "unquantized checkpoint (e.g. dtype=torch.float32), clone it, then quantize the result."
        )
    for name, p in model.state_dict().items():
        if p.device.type == "meta":
            raise ValueError(
                f"Parameter {name} is on the meta device (no data). Load the model with real weights "
                "(no device_map='meta' / init_empty_weights, no disk offload) before cloning."
            )
        if not p.is_floating_point():
            raise ValueError(
                f"Parameter {name} has dtype {p.dtype}; HyperCloning needs floating-point weights."
            )


def _check_heads(adapter: Adapter, s: Shape) -> None:
    """Refuse layouts that cannot grow by adding heads of the same size."""
    if s.heads < 1 or s.kv_heads < 1 or s.heads % s.kv_heads:
        raise ValueError(
            f"Head layout {s.heads} query heads / {s.kv_heads} kv heads cannot be grown exactly: the number of "
            "query heads must be a multiple of the number of kv heads."
        )
    if adapter.family in ("gpt2", "gpt_neox", "opt") and s.hidden % s.heads:
        raise ValueError(
            f"hidden size {s.hidden} is not divisible by {s.heads} heads, so head_dim is not an integer and "
            "cannot be kept when the model grows."
        )


def _dropout_active(config: PretrainedConfig) -> bool:
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and not key.startswith(("summary", "classifier")):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return True
    return False


def _plan_tie(
    adapter: Adapter, model: PreTrainedModel, tie_word_embeddings: bool | None, sd: dict[str, torch.Tensor]
) -> bool:
    """Decide whether the clone ties its output head to the input embedding."""
    src_tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out_emb = model.get_output_embeddings()
    src_tied = src_tied and out_emb is not None and out_emb.weight is model.get_input_embeddings().weight
    if tie_word_embeddings is None:
        return src_tied
    if tie_word_embeddings and not src_tied:
        raise ValueError(
            "tie_word_embeddings=True but the source model's output head is not tied to its input embedding: "
            "tying them would change the function. Pass tie_word_embeddings=None or False."
        )
    return bool(tie_word_embeddings)


# ---------------------------------------------------------------- the grown state dict
def _final_norm_names(adapter: Adapter, names: list[str]) -> list[str]:
    return [k for k in names if adapter.final_norm and re.search(adapter.final_norm, k)]


def _deepen(
    sd: dict[str, torch.Tensor], adapter: Adapter, num_layers: int, k: int, mode: DepthMode
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Insert ``(k - 1) * L`` new blocks; each copies a source block with its residual outputs zeroed.

    A pre-norm block computes ``x + f(norm(x))``; with the last projection of every branch (and its
    bias) at zero, ``f == 0`` and the block is the identity, so the function is unchanged. Returns the new
    state dict and, for each new layer index, the index of the source layer it came from.
    """
    if k == 1:
        return sd, list(range(num_layers))
    pattern = re.compile(adapter.layer_pattern)
    origin: list[int] = []  # new index -> source index
    fresh: list[bool] = []
    for i in range(num_layers * k):
        if mode == "interleave":
            origin.append(i // k)
            fresh.append(i % k != 0)
        else:
            origin.append(i % num_layers)
            fresh.append(i >= num_layers)
    by_layer: dict[int, list[tuple[str, str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        match = pattern.match(name)
        if match is None:
            out[name] = t
        else:
            by_layer.setdefault(int(match.group(2)), []).append((match.group(1), match.group(3), t))
    for new_i, (src_i, is_new) in enumerate(zip(origin, fresh)):
        for prefix, rest, t in by_layer.get(src_i, []):
            if not is_new:
                out[f"{prefix}{new_i}.{rest}"] = t
            elif any(re.search(r, rest) for r in adapter.residual_outputs):
                out[f"{prefix}{new_i}.{rest}"] = torch.zeros_like(t)
            else:
                out[f"{prefix}{new_i}.{rest}"] = t.clone()
    return out, origin


def _grown_config(
    model: PreTrainedModel,
    adapter: Adapter,
    shape: Shape,
    n: int,
    m: int,
    depth: int,
    depth_mode: DepthMode,
    tie: bool,
    dtype: torch.dtype,
    snr_db: float | None,
    final_norm_scale: float,
) -> PretrainedConfig:
    config = copy.deepcopy(model.config)
    adapter.set_sizes(config, shape, n, m)
    config.tie_word_embeddings = tie
    if depth > 1:
        num_layers = getattr(model.config, adapter.num_layers_key)
        setattr(config, adapter.num_layers_key, num_layers * depth)
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list):
            if depth_mode == "interleave":
                config.layer_types = [t for t in layer_types for _ in range(depth)]
            else:
                config.layer_types = list(layer_types) * depth
        if hasattr(config, "max_window_layers") and getattr(config, "max_window_layers", None):
            config.max_window_layers = config.max_window_layers * depth
    config.dtype = dtype
    source_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    suffix = f"hypercloned-{n}x" + (f"-ffn{m}x" if m != n else "") + (f"-depth{depth}x" if depth > 1 else "")
    config._name_or_path = f"{source_name}-{suffix}"
    # provenance (saved in config.json, ignored by transformers); verify() reads final_norm_scale
    config.hypercloning = {
        "source": source_name,
        "width_multiplier": n,
        "ffn_multiplier": m,
        "depth_multiplier": depth,
        "depth_mode": depth_mode,
        "snr_db": snr_db,
        "final_norm_scale": final_norm_scale,
        "paper": "arXiv:2409.12903",
    }
    return config


def _empty_model(cls: type[PreTrainedModel], config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """Build ``cls(config)`` with parameters on the meta device and real buffers (RoPE, Gemma scale).

    Buffers are computed from the *new* config (Gemma's ``embed_scale`` becomes ``sqrt(n d)``).
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls._from_config(config, dtype=dtype)


def clone(
    model: PreTrainedModel,
    width_multiplier: int = 2,
    ffn_multiplier: int | None = None,
    snr_db: float | None = None,
    *,
    tie_word_embeddings: bool | None = None,
    torch_dtype: torch.dtype | str | None = None,
    depth_multiplier: int = 1,
    depth_mode: DepthMode = "interleave",
    seed: int = 0,
    progress: bool = False,
    warn_symmetry: bool = True,
) -> PreTrainedModel:
    """Grow ``model`` into the same class with ``width_multiplier`` x hidden size and heads (same head_dim).

    ``ffn_multiplier`` (default: ``width_multiplier``) grows the MLP width; ``depth_multiplier`` adds
    identity blocks (zeroed output projections) after every block (``interleave``) or on top (``append``).
    ``snr_db`` adds function-preserving +/- noise pairs that let training break the copies' symmetry.
    ``tie_word_embeddings``: None keeps the source's tying (a tied head is kept exact by rescaling the final
    norm), False unties. ``torch_dtype``: destination dtype (default: the source's); grown in fp32, cast once.
    The clone computes the source's function: in fp32 its logits match to ~1e-6.
    """
    n = _check_multiplier("width_multiplier", width_multiplier)
    m = _check_multiplier("ffn_multiplier", n if ffn_multiplier is None else ffn_multiplier)
    depth = _check_multiplier("depth_multiplier", depth_multiplier)
    if depth_mode not in ("interleave", "append"):
        raise ValueError(f"depth_mode must be 'interleave' or 'append', got {depth_mode!r}.")
    if snr_db is not None and (not isinstance(snr_db, numbers.Real) or not math.isfinite(snr_db)):
        raise ValueError(f"snr_db must be a finite number of decibels (e.g. 10) or None, got {snr_db!r}.")
    _check_model(model)
    adapter = get_adapter(model.config)
    shape = adapter.shape(model.config)
    _check_heads(adapter, shape)
    if depth > 1 and adapter.check_depth is not None:
        adapter.check_depth(model.config, depth_mode)
    if isinstance(torch_dtype, str):
        torch_dtype = getattr(torch, torch_dtype)
    sd = model.state_dict()
    first = next(iter(sd.values()))
    dtype = torch_dtype or first.dtype
    sizes = adapter.sizes(shape, n, m)

    # ---- plan every tensor before allocating anything: unknown names / shapes fail here
    rules = {}
    for name, t in sd.items():
        rule = adapter.rule_for(name)
        expected = rule.source_shape(sizes) if rule is not None else None
        if rule is None or (expected is not None and tuple(t.shape) != expected):
            why = (
                "no rule matches it"
                if rule is None
                else f"shape {tuple(t.shape)} but the rule expects {expected}"
            )
            raise NotImplementedError(
                f"The {adapter.family} adapter cannot grow parameter {name!r}: {why}. This checkpoint has a "
                "layout the adapter does not know; extend the adapter's rules (docs/hypercloning.md)."
            )
        rules[name] = rule
    tie = _plan_tie(adapter, model, tie_word_embeddings, sd)
    emb_name = next(k for k, r in rules.items() if r.kind == "embedding" and r.out == "V")
    head_name = next((k for k, r in rules.items() if r.kind == "head"), None)
    emb_rule = rules[emb_name]
    emb_scale = 1.0 / math.sqrt(n) if adapter.sqrt_embed_scale else 1.0
    in_rep = sizes[emb_rule.inp][1]  # type: ignore[index]
    # a tied head reads tile(E) * emb_scale but needs tile(E) / in_rep: rescale the final norm instead
    final_norm_scale = 1.0 / (in_rep * emb_scale) if tie else 1.0
    norm_names = _final_norm_names(adapter, list(sd))
    if tie and abs(final_norm_scale - 1.0) > 1e-12 and not norm_names:
        if tie_word_embeddings:
            raise ValueError(
                "This model has no affine final norm before its tied output head, so a tied clone cannot be "
                "exact. Pass tie_word_embeddings=False (or None) to untie the clone's head."
            )
        warnings.warn(
            "No affine final norm before the tied head: the clone's head is untied to stay exact.",
            stacklevel=2,
        )
        tie, final_norm_scale = False, 1.0
    if snr_db is None and warn_symmetry and (n > 1 or m > 1) and not _dropout_active(model.config):
        warnings.warn(
            "HyperCloning without noise (snr_db=None) on a model without dropout: the copies inside the clone get "
            "identical gradients and will stay identical during training, so the clone keeps the small model's "
            "capacity. Pass snr_db (e.g. 10) to break the symmetry while keeping the function exact.",
            UserWarning,
            stacklevel=2,
        )

    num_layers = getattr(model.config, adapter.num_layers_key)
    config = _grown_config(
        model, adapter, shape, n, m, depth, depth_mode, tie, dtype, snr_db, final_norm_scale
    )
    dest = _empty_model(type(model), config, dtype)  # meta parameters: no allocation yet
    dest_shapes = {k: tuple(v.shape) for k, v in dest.state_dict().items()}

    # ---- check the grown shapes against the freshly built (meta) destination, still before allocating
    planned = {  # meta tensors: shapes only
        name: torch.empty(rules[name].dest_shape(sizes, tuple(t.shape)), device="meta")
        for name, t in sd.items()
        if not (tie and name == head_name)
    }
    planned_deep, _ = _deepen(planned, adapter, num_layers, depth, depth_mode)
    for name, t in planned_deep.items():
        shp = tuple(t.shape)
        if dest_shapes.get(name) != shp:
            raise NotImplementedError(
                f"Grown shape of {name!r} would be {shp} but {type(model).__name__} built from the grown "
                f"config expects {dest_shapes.get(name)}: the {adapter.family} adapter does not match this model."
            )
    missing = set(dest_shapes) - set(planned_deep) - ({head_name} if tie and head_name else set())
    if missing:
        raise NotImplementedError(
            f"The grown model has parameters the adapter does not produce: {sorted(missing)}"
        )

    # ---- grow, tensor by tensor (each temporary is one tensor; the source is only read)
    generator = torch.Generator().manual_seed(seed)
    grown: dict[str, torch.Tensor] = {}
    items = [(k, v) for k, v in sd.items() if not (tie and k == head_name)]
    iterator: Any = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc=f"HyperCloning {n}x", unit="tensor")
    for name, t in iterator:
        rule = rules[name]
        scale, offset = 1.0, 0.0
        if name == emb_name:
            scale = emb_scale
        elif name in norm_names and final_norm_scale != 1.0:
            scale = final_norm_scale
            offset = adapter.norm_offset if name.endswith("weight") else 0.0
        grown[name] = apply_rule(
            rule, t, sizes, dtype=dtype, scale=scale, offset=offset, snr_db=snr_db, generator=generator
        )
    if tie and head_name is not None:
        grown[head_name] = grown[emb_name]
    grown, _ = _deepen(grown, adapter, num_layers, depth, depth_mode)

    dest.load_state_dict(grown, strict=True, assign=True)
    if tie:
        dest.tie_weights()
    dest.train(model.training)
    if getattr(model, "generation_config", None) is not None:
        dest.generation_config = copy.deepcopy(model.generation_config)
    return dest


def grow_depth(
    model: PreTrainedModel,
    depth_multiplier: int = 2,
    *,
    depth_mode: DepthMode = "interleave",
    torch_dtype: torch.dtype | str | None = None,
    progress: bool = False,
) -> PreTrainedModel:
    """Exact depth growth: ``depth_multiplier`` x layers, new blocks are identities (zeroed outputs).

    New blocks copy their neighbour's weights except the residual-branch output projections, which start at
    zero (their gradients do not, so they start learning at once). Compose with width via ``clone``.
    """
    return clone(
        model,
        width_multiplier=1,
        ffn_multiplier=1,
        depth_multiplier=depth_multiplier,
        depth_mode=depth_mode,
        torch_dtype=torch_dtype,
        progress=progress,
        warn_symmetry=False,
    )


def from_pretrained(
    model_or_path: str | os.PathLike | PreTrainedModel,
    width_multiplier: int = 2,
    ffn_multiplier: int | None = None,
    snr_db: float | None = None,
    *,
    tie_word_embeddings: bool | None = None,
    torch_dtype: torch.dtype | str | None = None,
    depth_multiplier: int = 1,
    depth_mode: DepthMode = "interleave",
    seed: int = 0,
    progress: bool = False,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM (folder, hub id or model object) and return its HyperClone.

    Multipliers are validated before loading, so a typo does not cost a multi-GB read.
    """
    _check_multiplier("width_multiplier", width_multiplier)
    _check_multiplier("ffn_multiplier", width_multiplier if ffn_multiplier is None else ffn_multiplier)
    _check_multiplier("depth_multiplier", depth_multiplier)
    if isinstance(model_or_path, PreTrainedModel):
        model = model_or_path
    else:
        from_pretrained_kwargs.setdefault("dtype", "auto")
        model = AutoModelForCausalLM.from_pretrained(model_or_path, **from_pretrained_kwargs)
    return clone(
        model,
        width_multiplier,
        ffn_multiplier,
        snr_db,
        tie_word_embeddings=tie_word_embeddings,
        torch_dtype=torch_dtype,
        depth_multiplier=depth_multiplier,
        depth_mode=depth_mode,
        seed=seed,
        progress=progress,
    )
