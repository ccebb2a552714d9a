"""ALiBi head placement: each source head at the grown head with its own slope, the other heads dormant.

An ALiBi head's position bias is ``slope * position`` with the slope computed from the head count, so the
plain tiling (grown head ``g`` = source head ``g mod H``) gives the copies other slopes. For BLOOM's and MPT's
formulas the ``n * H`` grown slopes contain every one of the ``H`` source slopes (the source's exponents
are multiples of ``8 / P`` and, at ``n >= 2``, every multiple of ``8 / P'`` with ``P' >= 2 P`` is a grown
exponent; ``P`` the head count rounded to a power of two, down for BLOOM and up for MPT). So each source head
``h`` goes to the grown head ``slot[h]`` that has its slope: its q/k/v rows (input columns tiled and divided
by ``n`` as usual) and its output-projection input columns (undivided: the head appears once). Every other
grown head is *dormant*: its q/k/v rows copy the source head with the nearest slope and its output-projection
columns are zero, so it adds nothing at clone time, yet those columns get a gradient (the head's context is
not zero) and the head comes alive after the first step. The rest of the model tiles as usual.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PreTrainedModel

from .layout import Choice
from .refusals import HyperCloningRefused

if TYPE_CHECKING:
    from .engine import Plan


@dataclass(frozen=True)
class _Family:
    qkv: str  # the attention module's fused q/k/v projection
    out: str  # its output projection
    head_major: bool  # q/k/v rows grouped [heads, 3, head_dim] (BLOOM), else [3, heads, head_dim] (MPT)
    heads_key: str  # the config field with the head count


FAMILIES: dict[str, _Family] = {
    "bloom": _Family("query_key_value", "dense", True, "n_head"),
    "mpt": _Family("Wqkv", "out_proj", False, "n_heads"),
}


@dataclass(frozen=True)
class HeadPlacement:
    """Where each source head goes (``slot``) and which source head each grown head's q/k/v copy (``source``)."""

    heads: int
    n: int
    slot: tuple[int, ...]  # source head -> grown head with the same slope
    source: tuple[int, ...]  # grown head -> source head whose q/k/v rows it holds

    @property
    def dormant(self) -> tuple[int, ...]:
        """Grown heads whose output-projection columns start at zero."""
        return tuple(g for g in range(self.heads * self.n) if g not in self.slot)


def model_slopes(model: PreTrainedModel, heads: int) -> list[float]:
    """The slopes ``model``'s own ALiBi builder gives ``heads`` heads (BLOOM's or MPT's; the grown model's too)."""
    base = model.base_model
    with torch.no_grad():
        if hasattr(base, "build_alibi_tensor"):  # BLOOM: slope * (position 0, 1)
            bias = base.build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), heads, torch.float32)
            return [float(x) for x in bias[:, 0, 1]]
        if hasattr(base, "build_mpt_alibi_tensor"):  # MPT: slope * (relative position -1, 0)
            bias = base.build_mpt_alibi_tensor(heads, 2)
            return [float(-x) for x in bias[:, 0, 0]]
    raise HyperCloningRefused(
        "alibi-dormant-heads", f"{type(base).__name__} has no ALiBi builder this placement knows"
    )


def placement(model: PreTrainedModel, n: int) -> HeadPlacement | None:
    """The head placement for an ALiBi ``model`` grown ``n`` times (None: not an ALiBi family, or depth only).

    The slopes come from the model's own builder; a source slope missing from the grown set is refused
    (``alibi``) before anything is built.
    """
    family = FAMILIES.get(model.config.model_type)
    if family is None or n == 1:
        return None
    heads = getattr(model.config, family.heads_key)
    small, big = model_slopes(model, heads), model_slopes(model, heads * n)
    slot = []
    for h, s in enumerate(small):
        match = next((g for g, b in enumerate(big) if math.isclose(b, s, rel_tol=1e-6)), None)
        if match is None or match in slot:
            raise HyperCloningRefused(
                "alibi",
                f"{model.config.model_type} uses ALiBi: source head {h}'s slope {s:.6g} is not among the slopes "
                f"of {heads * n} heads, so no placement of the source heads keeps their biases.",
            )
        slot.append(match)
    owner = {g: h for h, g in enumerate(slot)}
    source = tuple(
        owner.get(g, min(range(heads), key=lambda h: (abs(math.log2(big[g]) - math.log2(small[h])), h)))
        for g in range(heads * n)
    )
    return HeadPlacement(heads, n, tuple(slot), source)


def _grow_qkv(
    src: torch.Tensor, dtype: torch.dtype, *, place: HeadPlacement, head_major: bool
) -> torch.Tensor:
    """Fused q/k/v weight [3 D, D] (or bias [3 D]): grown head ``g`` holds source head ``source[g]``'s rows."""
    x = src.detach().double()
    index = torch.tensor(place.source, device=x.device)
    tail = tuple(x.shape[1:])  # (D,) for the weight, () for the bias
    if head_major:  # [heads, 3 * head_dim, ...]
        grown = x.reshape(place.heads, -1, *tail).index_select(0, index)
    else:  # [3, heads, head_dim, ...]
        grown = x.reshape(3, place.heads, -1, *tail).index_select(1, index)
    grown = grown.reshape(-1, *tail)
    if tail:  # the input axis reads the tiled hidden state: n copies of W / n
        grown = grown.repeat(1, place.n) / place.n
    return grown.to(dtype)


def _grow_out(src: torch.Tensor, dtype: torch.dtype, *, place: HeadPlacement) -> torch.Tensor:
    """Output projection [D, D] -> rows tiled n times; source head h's columns at grown head ``slot[h]``."""
    heads, n = place.heads, place.n
    w = src.detach().reshape(src.shape[0], heads, -1)
    grown = torch.zeros(src.shape[0], heads * n, w.shape[2], dtype=dtype, device=w.device)
    grown[:, list(place.slot)] = w.to(dtype)
    return grown.flatten(1).repeat(n, 1)


def install(model: PreTrainedModel, plan: Plan, place: HeadPlacement) -> list[str]:
    """Give each attention module's q/k/v and output projection the head placement (before any tensor is filled).

    Their layouts get a single choice (the search leaves them alone): q/k/v contract their tiled input (so
    the noise pairs and the 1/n learning-rate factor apply as usual), the output projection contracts nothing
    tiled (no noise there: its grown heads are not copies; its entries are the source's). Returns the
    attention modules placed.
    """
    family = FAMILIES[model.config.model_type]
    n = place.n
    qkv_grow = functools.partial(_grow_qkv, place=place, head_major=family.head_major)
    out_grow = functools.partial(_grow_out, place=place)
    placed = []
    for name, module in model.named_modules():
        qkv, out = getattr(module, family.qkv, None), getattr(module, family.out, None)
        if not (isinstance(qkv, nn.Linear) and isinstance(out, nn.Linear)):
            continue
        d = qkv.in_features
        for tensor, choice, grow in (
            (f"{name}.{family.qkv}.weight", Choice((((3 * d, n),), ((d, n),)), (1,)), qkv_grow),
            (f"{name}.{family.out}.weight", Choice((((d, n),), ((d, n),)), ()), out_grow),
        ):
            layout = next(lay for lay in plan.layouts.values() if tensor in lay.members)
            layout.choices, layout.index = [choice], 0
            plan.custom[tensor] = grow
        if qkv.bias is not None:  # follows its rows (the output projection's bias tiles as usual)
            plan.custom[f"{name}.{family.qkv}.bias"] = qkv_grow
        placed.append(name)
    if not placed:
        raise HyperCloningRefused(
            "alibi-dormant-heads",
            f"no attention module with {family.qkv!r} and {family.out!r} projections found to place the heads in",
        )
    return placed
