"""Generic tiling rules: how one source tensor becomes its HyperCloned counterpart.

Every tensor dimension is described by *segments*: a dimension of size ``s1 + s2 + ...`` whose
``i``-th segment is repeated ``k_i`` times in the destination (``[a; b] -> [a; a; b; b]`` for a fused
``[gate; up]`` grown 2x). A linear layer's output dimension may be fused (several segments); its input
dimension is one segment whose repeat count ``p`` is also the divisor, so that each output block sums
``p`` copies of ``W / p`` over ``p`` identical input copies and returns ``W x`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Kind = Literal["linear", "conv1d", "embedding", "head", "vector", "copy"]
# symbol -> (source size, repeat count), e.g. {"d": (512, 2), "kv": (128, 1)}
Sizes = dict[str, tuple[int, int]]


@dataclass(frozen=True)
class Rule:
    """How to grow one parameter.

    ``out``: output-side layout, ``+``-separated symbols (``"q+kv+kv"`` for a fused Phi-3 qkv).
    ``inp``: input-side symbol for matrices (``None`` for vectors).
    ``kind``: ``linear`` (weight is ``out x in``, input copies divided), ``conv1d`` (GPT-2 ``Conv1D``,
    weight is ``in x out``), ``embedding`` (lookup table ``rows x dim``: no division), ``head`` (a linear
    output layer: divided, never noised), ``vector`` (bias or norm gain: tiled, never divided),
    ``copy`` (unchanged, e.g. Qwen3's per-head q/k norms).
    """

    kind: Kind
    out: str = ""
    inp: str | None = None

    def segments(self, sizes: Sizes) -> list[tuple[int, int]]:
        return [sizes[s] for s in self.out.split("+")] if self.out else []

    def source_shape(self, sizes: Sizes) -> tuple[int, ...] | None:
        """Expected source shape (``None`` for ``copy``): a cheap self-check of the adapter."""
        if self.kind == "copy":
            return None
        out = sum(s for s, _ in self.segments(sizes))
        if self.kind == "vector":
            return (out,)
        inp = sizes[self.inp][0]  # type: ignore[index]
        return (inp, out) if self.kind == "conv1d" else (out, inp)

    def dest_shape(self, sizes: Sizes, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "copy":
            return shape
        out = sum(s * k for s, k in self.segments(sizes))
        if self.kind == "vector":
            return (out,)
        s, k = sizes[self.inp]  # type: ignore[index]
        return (s * k, out) if self.kind == "conv1d" else (out, s * k)


def _fill(
    dest: torch.Tensor, src: torch.Tensor, row_segs: list[tuple[int, int]], col_segs: list[tuple[int, int]]
) -> None:
    """Write the tiled ``src`` into ``dest`` in one pass (no intermediate tiled tensors).

    ``dest`` is allocated once; every (row segment, column segment) pair is a strided copy from an expanded
    view, which is memory-bound: fresh allocations and ``repeat`` chains would touch the memory 2-3 times.
    """
    r_src = r_dst = 0
    for sr, qr in row_segs:
        c_src = c_dst = 0
        for sc, qc in col_segs:
            block = (
                dest[r_dst : r_dst + qr * sr, c_dst : c_dst + qc * sc]
                .unflatten(0, (qr, sr))
                .unflatten(2, (qc, sc))
            )
            piece = src[r_src : r_src + sr, c_src : c_src + sc]
            block.copy_(piece[None, :, None, :].expand(qr, sr, qc, sc))
            c_src, c_dst = c_src + sc, c_dst + qc * sc
        r_src, r_dst = r_src + sr, r_dst + qr * sr


def _add_noise_pairs(
    dest: torch.Tensor,
    base: torch.Tensor,
    src_out_segments: list[tuple[int, int]],
    p: int,
    snr_db: float,
    generator: torch.Generator,
) -> None:
    """Overwrite each pair of input-column blocks of ``dest`` (``out' x in'`` view) with ``W/p +N`` and ``W/p -N``.

    The paired blocks multiply identical input copies, so ``+N x - N x = 0`` and the function is
    unchanged, yet every block now differs and gradient descent can tell the copies apart. Noise power
    is set per output block to ``mean((W/p)^2) / 10^(snr/10)`` (empirical power, as in the paper).
    ``base`` is ``W / p`` in fp32 (``out x in``).
    """
    if p < 2:
        return
    ratio = 10.0 ** (-snr_db / 10.0)
    in_size = base.shape[1]
    src_row = dst_row = 0
    for seg_size, reps in src_out_segments:
        block = base[src_row : src_row + seg_size]
        power = block.pow(2).mean()
        for _ in range(reps):
            rows = slice(dst_row, dst_row + seg_size)
            for k in range(p // 2):
                noise = torch.randn(seg_size, in_size, generator=generator, dtype=torch.float32)
                noise *= torch.sqrt(power * ratio / noise.pow(2).mean().clamp_min(1e-30))
                dest[rows, 2 * k * in_size : (2 * k + 1) * in_size].copy_(block + noise)
                dest[rows, (2 * k + 1) * in_size : (2 * k + 2) * in_size].copy_(block - noise)
            dst_row += seg_size
        src_row += seg_size


def apply_rule(
    rule: Rule,
    x: torch.Tensor,
    sizes: Sizes,
    *,
    dtype: torch.dtype,
    scale: float = 1.0,
    offset: float = 0.0,
    snr_db: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Grow one tensor by ``rule`` into a freshly allocated tensor of ``dtype``.

    Division, ``scale`` and ``offset`` are applied to the (small) source in fp32 before tiling, which is
    the same as applying them after: the destination is written once. ``scale``/``offset`` implement
    ``w' = (w + offset) * scale - offset``: Gemma's ``1/sqrt(n)`` embedding compensation and the tied-head
    final-norm rescale (``offset=1`` for ``(1 + w)`` norms).
    """
    x = x.detach()
    if rule.kind == "copy":
        return x.to(dtype=dtype, copy=True)
    p = sizes[rule.inp][1] if rule.inp else 1
    divisor = p if rule.kind in ("linear", "conv1d", "head") else 1
    noisy = snr_db is not None and rule.kind in ("linear", "conv1d") and p > 1
    base = x
    divide_in_place = False
    if scale != 1.0 or offset or noisy:  # rare tensors / the noise path: fp32 source-size temporaries
        base = x.float() / divisor if divisor != 1 else x.float()
        if offset or scale != 1.0:
            base = (base + offset) * scale - offset
    else:  # common path: one fresh allocation (the destination), divided in place afterwards
        divide_in_place = divisor != 1
    src = base.to(dtype)
    out_segs = rule.segments(sizes)
    if rule.kind == "vector":
        dest = torch.empty(sum(s * k for s, k in out_segs), dtype=dtype)
        _fill(dest[:, None], src[:, None], out_segs, [(1, 1)])
        return dest
    in_segs = [sizes[rule.inp]]  # type: ignore[index]
    if rule.kind == "conv1d":  # weight stored (in, out)
        dest = torch.empty(rule.dest_shape(sizes, tuple(x.shape)), dtype=dtype)
        _fill(dest, src, in_segs, out_segs)
        if divide_in_place:
            dest.div_(divisor)
        if noisy:
            _add_noise_pairs(dest.t(), base.t(), out_segs, p, snr_db, generator or torch.Generator())  # type: ignore[arg-type]
        return dest
    dest = torch.empty(rule.dest_shape(sizes, tuple(x.shape)), dtype=dtype)
    _fill(dest, src, out_segs, in_segs)
    if divide_in_place:
        dest.div_(divisor)  # fp32 -> fp32 (or same dtype): identical to dividing first
    if noisy:
        _add_noise_pairs(dest, base, out_segs, p, snr_db, generator or torch.Generator())  # type: ignore[arg-type]
    return dest


def inv_sqrt(n: int) -> float:
    """``1/sqrt(n)`` in double precision (Gemma's ``sqrt(hidden_size)`` embedding normaliser)."""
    return 1.0 / math.sqrt(n)
