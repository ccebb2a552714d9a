"""HyperCloning: grow a trained causal LM into a wider (and optionally deeper) one, same function.

Reference: Samragh et al., "Scaling Smart: Accelerating Large Language Model Pre-training with Small
Model Initialization", arXiv 2409.12903 (2024). Our own implementation: the growth is read off the model
(config width fields, module types, parameter shapes, a traced forward where shapes are ambiguous; see
``engine.py``), the destination is built with empty weights and each grown tensor is written once, so peak
memory is source + destination. The layouts are always chosen by a traced forward of source and clone (so
``verify=False`` never changes the clone); ``verify`` decides whether a remaining difference is a refusal.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from hf_salt.checks import check_finite, check_model_path
from hf_salt.zoo import parse_dtype

from . import alibi, engine
from .probe import probe_inputs, trace
from .refusals import HyperCloningRefused, UnverifiedCloneWarning
from .validation import check_grow_args, check_tolerance

DepthMode = Literal["interleave", "append"]
_ALIBI_TYPES = frozenset(
    {"bloom", "mpt"}
)  # families whose attention is always ALiBi (MPT ignores attn_config.alibi)
# position tables computed from the width (sinusoids with frequencies 10000^(-2i/d)): tiling cannot keep them
_SINUSOID_TYPES = {
    "ctrl": "its sinusoidal position table is computed from n_embd",
    "xglm": "its sinusoidal position embedding is computed from d_model",
    "xlnet": "its sinusoidal relative position encoding is computed from d_model",
}


def alibi_slopes(heads: int, max_bias: float = 8.0, mpt: bool = False) -> list[float]:
    """ALiBi slopes as base-2 exponents (slope = 2**-e): BLOOM's ``build_alibi_tensor``, or MPT's ``gen_slopes``."""
    if mpt:
        padded = 2 ** math.ceil(math.log2(heads))
        exps = [i * max_bias / padded for i in range(1, padded + 1)]
        return (exps[1::2] + exps[::2])[:heads] if padded != heads else exps
    closest = 2 ** math.floor(math.log2(heads))
    exps = [i * 8.0 / closest for i in range(1, closest + 1)]
    if closest != heads:
        exps += [i * 8.0 / (2 * closest) for i in range(1, 2 * (heads - closest), 2)]
    return exps


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


def _check_alibi(config: PretrainedConfig, c: PretrainedConfig, n: int) -> None:
    """ALiBi: impossible when a source slope is missing from the grown set; else built for BLOOM and MPT
    (each source head at the grown head with its slope, the others dormant: ``alibi.py``), not for others."""
    f = {**vars(config), **vars(c)}
    heads = next((f[k] for k in ("num_attention_heads", "n_head", "n_heads") if isinstance(f.get(k), int)), 0)
    if n == 1:  # depth only: the head count and so every slope stays
        return
    mpt = config.model_type == "mpt"
    max_bias = float(f.get("alibi_bias_max", 8.0) or 8.0)
    if heads:
        small, big = alibi_slopes(heads, max_bias, mpt), alibi_slopes(heads * n, max_bias, mpt)
        if all(any(math.isclose(a, b) for b in big) for a in small):
            if config.model_type in alibi.FAMILIES:
                return
            raise HyperCloningRefused(
                "alibi-dormant-heads",
                f"{config.model_type} uses ALiBi: the slopes of {heads * n} heads include all {heads} source slopes, "
                "so an exact clone would put each source head at its own slope and leave the others dormant; "
                f"that head placement is built for {' and '.join(sorted(alibi.FAMILIES))} only.",
            )
    missing = (
        f"the slopes of {heads * n} heads do not include every one of the {heads} source slopes"
        if heads
        else "the head count is not in the config, so the grown slopes cannot be compared"
    )
    raise HyperCloningRefused(
        "alibi",
        f"{config.model_type} uses ALiBi: each head's position-bias slope is computed from the number of heads, "
        f"and {missing}, so no placement of the source heads keeps their biases.",
    )


def _check_heads(config: PretrainedConfig, n: int = 2) -> None:
    """Refuse what no tiling can keep, before anything is allocated."""
    reason = _SINUSOID_TYPES.get(config.model_type)
    if reason and n > 1:
        raise HyperCloningRefused(
            "width-dependent-function",
            f"{config.model_type}: {reason}, so the grown model's table (frequencies 10000^(-2i/(n*d))) is not n "
            "copies of the source's.",
        )
    for c in {id(c): c for c in (config, engine.text_config(config), *vars(config).values())}.values():
        if not isinstance(c, PretrainedConfig):
            continue
        f = vars(c)
        if (
            c.model_type in _ALIBI_TYPES
            or f.get("alibi") is True
            or f.get("use_alibi") is True
            or (f.get("position_embedding_type") == "alibi")
        ):
            _check_alibi(config, c, n)
        heads = f.get("num_attention_heads")
        kv = f.get("num_key_value_heads")
        if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
            raise ValueError(
                f"Head layout {heads} query heads / {kv} kv heads cannot be grown exactly: the number of "
                "query heads must be a multiple of the number of kv heads."
            )


def _dropout_active(config: PretrainedConfig) -> bool:
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and not key.startswith(("summary", "classifier")):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return True
    return False


def _resolve_dtype(dtype: Any, torch_dtype: Any, default: torch.dtype) -> torch.dtype:
    if torch_dtype is not None:
        warnings.warn("torch_dtype= is deprecated; pass dtype= instead.", FutureWarning, stacklevel=3)
        if dtype is not None and dtype != torch_dtype:
            raise ValueError("Pass dtype= only (torch_dtype= is its deprecated alias), not both.")
        dtype = torch_dtype
    dtype = parse_dtype(dtype)
    if dtype == "auto":  # as in from_pretrained: the source's
        dtype = None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}.")
    return dtype or default


def _check_embeddings(model: PreTrainedModel) -> None:
    """One input embedding table is what the growth reads; refuse anything else by name before any work."""
    for which, module in (("input", model.get_input_embeddings()), ("output", model.get_output_embeddings())):
        if module is not None and not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise HyperCloningRefused(
                "embeddings",
                f"{model.config.model_type}'s {which} embedding is a {type(module).__name__}, not one table with "
                "a weight (MusicGen has one per codebook).",
            )


def _source_tie(model: PreTrainedModel) -> bool:
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    return out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight


def clone(
    model: PreTrainedModel,
    width_multiplier: int = 2,
    ffn_multiplier: int | None = None,
    snr_db: float | None = None,
    *,
    tie_word_embeddings: bool | None = None,
    dtype: torch.dtype | str | None = None,
    depth_multiplier: int = 1,
    depth_mode: DepthMode = "interleave",
    seed: int = 0,
    progress: bool = False,
    warn_symmetry: bool = True,
    verify: bool = True,
    tolerance: float | None = None,
    torch_dtype: torch.dtype | str | None = None,
) -> PreTrainedModel:
    """Grow ``model`` into the same class with ``width_multiplier`` x hidden size and heads (same head_dim).

    ``ffn_multiplier`` (default: ``width_multiplier``) grows the MLP and expert widths; ``depth_multiplier`` adds
    identity blocks (zeroed output projections) after every block (``interleave``) or on top (``append``).
    ``snr_db`` adds function-preserving +/- noise pairs that let training break the copies' symmetry.
    ``tie_word_embeddings``: None keeps the source's tying (a tied head stays exact by rescaling the final
    norm), False unties. ``dtype``: destination dtype (default: the source's; ``torch_dtype`` is a deprecated
    alias). ``verify`` (default on): a traced forward of source and clone on 2 x 8 tokens must agree within
    ``tolerance`` (1e-4 relative in float32, 5e-2 in 16-bit), else :class:`HyperCloningRefused` names the first
    module whose output diverged. That traced forward also chooses the layouts, so it runs with ``verify=False``
    too and the clone is the same tensor for tensor; ``verify=False`` only skips the re-check after the noise
    (needed only where the layouts were searched: otherwise the one forward was of the noisy clone) and turns a
    remaining difference into a warning (``config.hypercloning['verified']`` is then False).
    The probe's max |logit difference| is recorded in ``config.hypercloning['probe_max_logit_diff']``.
    """
    n, m, depth, snr_db = check_grow_args(
        width_multiplier, ffn_multiplier, depth_multiplier, snr_db, depth_mode, tolerance
    )
    _check_model(model)
    check_finite(model, "the model to clone")  # a NaN source gives a NaN clone whose check says nothing
    src_dtype = next(model.parameters()).dtype
    out_dtype = _resolve_dtype(dtype, torch_dtype, src_dtype)
    if tie_word_embeddings is not None and not isinstance(tie_word_embeddings, bool):
        raise ValueError(f"tie_word_embeddings must be None, True or False, got {tie_word_embeddings!r}.")
    _check_heads(model.config, n)
    _check_embeddings(model)
    heads = alibi.placement(model, n)  # ALiBi: where each source head goes (refused here if nowhere)
    src_tied = _source_tie(model)
    if tie_word_embeddings and not src_tied:
        raise ValueError(
            "tie_word_embeddings=True but the source model's output head is not tied to its input embedding: "
            "tying them would change the function. Pass tie_word_embeddings=None or False."
        )
    keep_tie = src_tied and tie_word_embeddings is not False
    tol = check_tolerance(tolerance) or (1e-4 if src_dtype == torch.float32 else 5e-2)
    if snr_db is None and warn_symmetry and (n > 1 or m > 1) and not _dropout_active(model.config):
        warnings.warn(
            "HyperCloning without noise (snr_db=None) on a model without dropout: the copies inside the clone get "
            "identical gradients and will stay identical during training, so the clone keeps the small model's "
            "capacity. Pass snr_db (0 trains best: docs/hypercloning.md, 'Training a clone') to break the "
            "symmetry while keeping the function exact.",
            UserWarning,
            stacklevel=2,
        )

    vocab = (
        getattr(engine.text_config(model.config), "vocab_size", None)
        or model.get_input_embeddings().num_embeddings
    )
    ids, mask = probe_inputs(min(vocab, model.get_input_embeddings().num_embeddings))
    engine.check_source(model)
    if depth > 1:
        engine.check_depth(model, depth_mode, ids, mask)
        if n > 1 or m > 1:  # widen first (checked module by module), then deepen the wide model
            wide = clone(
                model, n, m, snr_db, tie_word_embeddings=tie_word_embeddings, seed=seed, progress=progress,
                warn_symmetry=False, verify=verify, tolerance=tolerance,
            )  # fmt: skip
            deep = clone(
                wide, 1, 1, depth_multiplier=depth, depth_mode=depth_mode, dtype=out_dtype, verify=verify
            )
            deep.config.hypercloning = {
                **wide.config.hypercloning,
                "depth_multiplier": depth,
                "depth_mode": depth_mode,
                "verified": wide.config.hypercloning["verified"] and deep.config.hypercloning["verified"],
                "probe_max_logit_diff": deep.config.hypercloning["probe_max_logit_diff"],
            }
            deep.config._name_or_path = deep.config._name_or_path.replace("-hypercloned-1x", "")
            return deep
    try:  # always: the layouts are chosen against it, whatever ``verify`` says
        source_trace = trace(model, ids, mask, keep_inputs=True)
    except Exception as err:
        raise ValueError(
            f"The source model's own forward fails on a 2 x 8 probe batch ({type(err).__name__}: {err}), so the "
            "clone's layouts cannot be chosen against it. Fix the source model so that its forward runs."
        ) from err
    source_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    suffix = f"hypercloned-{n}x" + (f"-ffn{m}x" if m != n else "") + (f"-depth{depth}x" if depth > 1 else "")

    def destination(tie: bool) -> PreTrainedModel:
        config = engine.grown_config(model, n, m, depth, depth_mode, None if tie == src_tied else tie)
        config.dtype = out_dtype
        config._name_or_path = f"{source_name}-{suffix}"
        return engine.build_empty(model, config)  # meta parameters: nothing allocated yet

    dest = destination(keep_tie)
    final_norm, final_index = (None, None)
    emb_grows = tuple(dest.get_input_embeddings().weight.shape) != tuple(
        model.get_input_embeddings().weight.shape
    )
    if keep_tie and emb_grows:
        # a tied head reads tile(E) but needs tile(E)/n: the norm that feeds it is rescaled instead
        final_norm, final_index = engine._final_norm(model, source_trace)
        if final_norm is None:
            if tie_word_embeddings:
                raise ValueError(
                    "This model has no affine final norm before its tied output head, so a tied clone cannot be "
                    "exact. Pass tie_word_embeddings=False (or None) to untie the clone's head."
                )
            warnings.warn(
                "No affine final norm before the tied head: the clone's head is untied to stay exact.",
                stacklevel=2,
            )
            keep_tie = False
            dest = destination(keep_tie)
    plan = engine.plan(model, dest, n, m, depth, depth_mode, keep_tie, final_norm)
    plan.final_norm, plan.final_norm_index = final_norm, final_index
    if heads is not None:
        alibi.install(model, plan, heads)
    if final_norm is not None:
        offset = engine._norm_offset(
            model.get_submodule(final_norm), next(iter(engine.hidden_sizes(model.config)), 1)
        )
        for layout in plan.layouts.values():
            for name in layout.members:
                if name.startswith(final_norm + ".") and name.endswith("weight"):
                    plan.offsets[name] = offset

    # before the tensors are filled
    rescaled = engine.embedding_scale_prior(model, plan, source_trace, ids, n)
    engine.assign_all(model, plan, src_dtype, progress=f"HyperCloning {n}x" if progress else None)
    check = engine.Check(
        model, ids, mask, source_trace, engine.hidden_sizes(model.config), n, tol, final_index, depth > 1
    )
    if rescaled:  # the embedding's own output is rescaled on purpose: the sqrt(hidden) after it undoes that
        emb = model.get_input_embeddings()
        check.skip_modules.update(k for k, v in model.named_modules() if v is emb)
    noisy = snr_db is not None and (n > 1 or m > 1)
    block = engine.head_size(model.config)
    # The first layouts are right for many decoders (Llama, Mistral, Qwen2/3): with the noise added at once, one
    # traced forward of the clone both settles the layouts (nothing to change) and checks the noisy clone that is
    # returned. Otherwise the noise is taken out again and the search runs as without noise, then the same noise
    # (same seed, same layouts' order) goes back in: the clone is the same either way.
    settled = False
    if noisy:
        engine.add_noise(plan, snr_db, seed, block=block)
        settled = check.divergence(plan.dest)[0] is None
        if not settled:
            engine.remove_noise(model, plan, src_dtype)
    exact = True
    if not settled:
        try:  # the layout search runs whatever ``verify`` says: skipping it would change the clone
            engine.search(model, plan, check, src_dtype)
        except HyperCloningRefused as err:
            if depth > 1 and err.reason == "mismatch" and n == 1:
                raise HyperCloningRefused(
                    "not-pre-norm",
                    f"{err.detail}: the identity blocks are not identities here (post-norm, or a residual branch "
                    "whose output projection is not recognised)",
                ) from err
            if verify or err.reason != "mismatch":
                raise
            exact = False
            warnings.warn(
                f"verify=False: the clone is NOT the source's function ({err.detail}); returned unverified.",
                UnverifiedCloneWarning,
                stacklevel=2,
            )
        if noisy:
            engine.add_noise(plan, snr_db, seed, block=block)
            if verify:
                div, _ = check.divergence(plan.dest)
                if div is not None:
                    raise HyperCloningRefused("mismatch", f"after adding noise, {div.describe()}")
    if out_dtype != src_dtype:
        plan.dest.to(out_dtype)
    dest.config.dtype = out_dtype
    scale = 1.0
    if final_norm is not None:
        scale = next(
            lay.choice.scale for lay in plan.layouts.values() if lay.members[0].startswith(final_norm + ".")
        )
    dest.config.hypercloning = {
        "source": source_name,
        "width_multiplier": n,
        "ffn_multiplier": m,
        "depth_multiplier": depth,
        "depth_mode": depth_mode,
        "snr_db": snr_db,
        "final_norm_scale": scale,
        "verified": bool(verify and exact),
        "probe_max_logit_diff": check.max_logit_diff,
        "lr_scale": engine.lr_scales(plan),
        "paper": "arXiv:2409.12903",
    }
    dest.train(model.training)
    if getattr(model, "generation_config", None) is not None:
        dest.generation_config = copy.deepcopy(model.generation_config)
    return dest


def grow_depth(
    model: PreTrainedModel,
    depth_multiplier: int = 2,
    *,
    depth_mode: DepthMode = "interleave",
    dtype: torch.dtype | str | None = None,
    progress: bool = False,
    verify: bool = True,
    torch_dtype: torch.dtype | str | None = None,
) -> PreTrainedModel:
    """Exact depth growth: ``depth_multiplier`` x layers, new blocks are identities (zeroed outputs).

    New blocks copy their neighbour's weights except the residual-branch output projections, which start at
    zero (their gradients do not, so they start learning at once). Refused (``not-pre-norm``) where a block
    with a zero branch is not the identity (post-norm blocks). Compose with width via ``clone``.
    """
    return clone(
        model,
        width_multiplier=1,
        ffn_multiplier=1,
        depth_multiplier=depth_multiplier,
        depth_mode=depth_mode,
        dtype=dtype,
        torch_dtype=torch_dtype,
        progress=progress,
        warn_symmetry=False,
        verify=verify,
    )


def load_source(src: str | os.PathLike, **from_pretrained_kwargs: Any) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` that says "no such local folder" for a missing local path."""
    check_model_path(src, "the source model")
    from_pretrained_kwargs.setdefault("dtype", "auto")
    from hf_salt.checks import naming_corrupt_files

    try:
        with naming_corrupt_files(src, "the source model"):  # a damaged safetensors file, named
            return AutoModelForCausalLM.from_pretrained(src, **from_pretrained_kwargs)
    except OSError as err:
        if not os.path.exists(os.path.expanduser(os.fspath(src))):
            raise FileNotFoundError(
                f"no such folder: {os.fspath(src)!r}, and no Hub model of that name could be loaded ({err})"
            ) from err
        raise


def from_pretrained(
    model_or_path: str | os.PathLike | PreTrainedModel,
    width_multiplier: int = 2,
    ffn_multiplier: int | None = None,
    snr_db: float | None = None,
    *,
    tie_word_embeddings: bool | None = None,
    dtype: torch.dtype | str | None = None,
    depth_multiplier: int = 1,
    depth_mode: DepthMode = "interleave",
    seed: int = 0,
    progress: bool = False,
    verify: bool = True,
    torch_dtype: torch.dtype | str | None = None,
    **from_pretrained_kwargs: Any,
) -> PreTrainedModel:
    """Load a causal LM (folder, hub id or model object) and return its HyperClone.

    Arguments are validated before loading, so a typo does not cost a multi-GB read.
    """
    check_grow_args(width_multiplier, ffn_multiplier, depth_multiplier, snr_db, depth_mode)
    if isinstance(model_or_path, PreTrainedModel):
        model = model_or_path
    else:
        model = load_source(model_or_path, **from_pretrained_kwargs)
    return clone(
        model,
        width_multiplier,
        ffn_multiplier,
        snr_db,
        tie_word_embeddings=tie_word_embeddings,
        dtype=dtype,
        torch_dtype=torch_dtype,
        depth_multiplier=depth_multiplier,
        depth_mode=depth_mode,
        seed=seed,
        progress=progress,
        verify=verify,
    )
