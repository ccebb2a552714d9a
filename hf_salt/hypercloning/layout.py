"""How one source tensor becomes its grown counterpart, read off shapes and module types.

A grown axis is a list of *segments* ``(size, repeats)``: ``[(f, 2), (f, 2)]`` turns a fused ``[gate; up]``
into ``[gate; gate; up; up]``; one segment tiles the whole axis. An axis the tensor *contracts* with the
input (a Linear's ``in`` axis, GPT-2 ``Conv1D``'s first axis) is divided by its repeat count, so each output
sums ``p`` copies of ``W/p`` over ``p`` identical input copies. Where shapes alone are ambiguous (fused
sections, which axis of a raw 3-D expert tensor is the input) a :class:`Layout` lists the candidates in order;
the engine tries them against a traced forward (``probe.py``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import nn

Segments = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Choice:
    """One way to grow a tensor: segments per axis, the contracted axes, and a scale."""

    segments: tuple[Segments, ...]
    contract: tuple[int, ...] = ()
    scale: float = 1.0


@dataclass
class Layout:
    """The candidate :class:`Choice` list of one tensor (the first is the default)."""

    choices: list[Choice]
    kind: str  # linear | conv1d | embedding | head | vector | raw | copy
    index: int = 0
    members: list[str] = field(default_factory=list)
    project: dict[str, int] = field(default_factory=dict)  # a bias member -> the weight axis it follows

    def choice_for(self, name: str) -> Choice:
        """The choice for one member; a bias follows its weight's output axis (and a norm's scale)."""
        choice = self.choice
        axis = self.project.get(name)
        if axis is None:
            return choice
        return Choice((choice.segments[axis],), (), choice.scale if self.kind == "vector" else 1.0)

    @property
    def choice(self) -> Choice:
        return self.choices[self.index]


def _decompositions(size: int, dest: int, atoms: list[tuple[int, int]], limit: int = 48) -> list[Segments]:
    """Ordered splits of an axis of ``size`` into named widths whose grown sizes add up to ``dest``."""
    return list(_decompositions_cached(size, dest, tuple(atoms), limit))


@functools.lru_cache(maxsize=1024)
def _decompositions_cached(
    size: int, dest: int, atoms: tuple[tuple[int, int], ...], limit: int
) -> tuple[Segments, ...]:
    """The search behind ``_decompositions``: every layer repeats the same axis sizes, so it runs once each."""
    usable = sorted((a for a in atoms if a[0] <= size), reverse=True)
    found: list[Segments] = []

    def walk(left: int, left_dest: int, acc: list[tuple[int, int]], k: int) -> None:
        if len(found) >= limit:
            return
        if len(acc) == k:
            if left == 0 and left_dest == 0:
                found.append(tuple(acc))
            return
        for s, r in usable:
            if s <= left and s * r <= left_dest:
                acc.append((s, r))
                walk(left - s, left_dest - s * r, acc, k)
                acc.pop()

    for k in range(2, 6):  # fewest sections first
        walk(size, dest, [], k)
    return tuple(found)


def axis_candidates(size: int, dest: int, atoms: list[tuple[int, int]]) -> list[Segments]:
    """Segmentations of one axis: whole tiling first, then equal splits, then splits into named widths."""
    out: list[Segments] = []
    if dest == size:
        return [((size, 1),)]
    r = dest // size if dest % size == 0 else 0
    if r:
        out.append(((size, r),))
    for seg in _decompositions(size, dest, atoms):  # sections named by the config, fewest first
        if seg not in out:
            out.append(seg)
    if r:
        for k in (2, 3, 4):  # equal sections the config does not name
            seg = ((size // k, r),) * k
            if size % k == 0 and size // k > 1 and seg not in out:
                out.append(seg)
    return out


def _module_kind(module: nn.Module | None, leaf: str, ndim: int) -> str:
    from transformers.pytorch_utils import Conv1D

    if module is None or ndim <= 1:
        return "vector"
    if isinstance(module, nn.Embedding) and leaf == "weight":
        return "embedding"
    if isinstance(module, nn.Linear) and leaf == "weight":
        return "linear"
    if isinstance(module, Conv1D) and leaf == "weight":
        return "conv1d"
    if isinstance(module, nn.modules.conv._ConvNd) and leaf == "weight":
        return "conv"
    if "norm" in type(module).__name__.lower():
        return "vector"
    return "raw"


def contract_candidates(
    kind: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], leaf: str = ""
) -> list[tuple[int, ...]]:
    """Which axes are summed against the (tiled) input, in order of likelihood."""
    grown = [i for i, (s, d) in enumerate(zip(src_shape, dst_shape)) if d != s]
    fixed = {
        "linear": [(1,)],
        "head": [(1,)],
        "conv": [(1,)],
        "conv1d": [(0,)],
        "embedding": [()],
        "vector": [()],
    }
    if kind in fixed:
        return [tuple(a for a in c if a in grown) for c in fixed[kind]]
    nd = len(src_shape)
    if nd >= 3 or leaf == "weight":  # expert tensors, custom routers: F.linear-style first
        order = [(nd - 1,), (nd - 2,), ()]
    else:
        order = [(), (nd - 1,), (0,)]
    out: list[tuple[int, ...]] = []
    for c in order:
        c = tuple(a for a in c if a in grown)
        if c not in out:
            out.append(c)
    return out


def plan_layout(
    name: str,
    module: nn.Module | None,
    src_shape: tuple[int, ...],
    dst_shape: tuple[int, ...],
    atoms: list[tuple[int, int]],
    *,
    kind: str | None = None,
    scales: tuple[float, ...] = (1.0,),
) -> Layout | str:
    """The candidate choices for one tensor, or a string saying why it cannot grow."""
    if len(src_shape) != len(dst_shape):
        return f"{name}: {len(src_shape)}-D in the source but {len(dst_shape)}-D grown"
    leaf = name.rsplit(".", 1)[-1]
    kind = kind or _module_kind(module, leaf, len(src_shape))
    per_axis = []
    for axis, (s, d) in enumerate(zip(src_shape, dst_shape)):
        cands = axis_candidates(s, d, atoms) if s else [((0, 1),)]
        if not cands:
            return (
                f"{name}: axis {axis} goes from {s} to {d}, which is no whole number of copies of its parts"
            )
        per_axis.append(cands)
    contracts = contract_candidates(kind, src_shape, dst_shape, leaf)
    choices: list[Choice] = []
    # vary one axis' segmentation at a time (the product would explode), then contraction and scale
    base = tuple(c[0] for c in per_axis)
    seg_options = [base] + [
        base[:i] + (alt,) + base[i + 1 :] for i, cands in enumerate(per_axis) for alt in cands[1:]
    ]
    for scale, contract, segs in itertools.product(scales, contracts, seg_options):
        choices.append(Choice(segs, contract, scale))
    return Layout(choices, kind)


def grow_tensor(
    src: torch.Tensor,
    dst_shape: tuple[int, ...],
    choice: Choice,
    *,
    dtype: torch.dtype,
    offset: float = 0.0,
) -> torch.Tensor:
    """Write the tiled ``src`` into a fresh tensor in one pass (no intermediate tiled tensors).

    Division and ``scale`` are applied to each (small) source block in fp32 before tiling; ``offset``
    implements ``w' = (w + offset) * scale - offset`` for ``(1 + w)`` norms.
    """
    src = src.detach()
    dest = torch.empty(dst_shape, dtype=dtype, device=src.device)
    if src.dim() == 0:
        dest.copy_(src)
        return dest
    starts = []
    for segs in choice.segments:
        s_pos = d_pos = 0
        spans = []
        for size, rep in segs:
            spans.append((s_pos, d_pos, size, rep))
            s_pos, d_pos = s_pos + size, d_pos + size * rep
        starts.append(spans)
    exact = choice.scale == 1.0 and not offset
    for combo in itertools.product(*starts):
        divisor = math.prod(combo[a][3] for a in choice.contract)
        piece = src[tuple(slice(s, s + size) for s, _, size, _ in combo)]
        if exact and divisor == 1:
            piece = piece.to(dtype)
        elif exact and divisor & (divisor - 1) == 0:
            piece = (piece / divisor).to(dtype)  # a power of two: exact in any dtype
        else:
            piece = _rescaled(piece, offset, choice.scale, divisor, dtype)
        block = dest[tuple(slice(d, d + size * rep) for _, d, size, rep in combo)]
        for axis in reversed(range(src.dim())):
            _, _, size, rep = combo[axis]
            block = block.unflatten(axis, (rep, size))
        view_shape = [x for _, _, size, _ in combo for x in (1, size)]
        expand_shape = [x for _, _, size, rep in combo for x in (rep, size)]
        block.copy_(piece.reshape(view_shape).expand(expand_shape))
    return dest


def _rescaled(
    piece: torch.Tensor, offset: float, scale: float, divisor: int, dtype: torch.dtype, chunk: int = 1 << 16
) -> torch.Tensor:
    """``((piece + offset) * scale - offset) / divisor`` in float64, rounded once to ``dtype``.

    Row blocks of about ``chunk`` elements: the float64 temporaries stay in cache, where whole-tensor ones
    (8 bytes per entry, one per operation) cost a pass over main memory each; same arithmetic, same bits.
    """
    out = torch.empty(piece.shape, dtype=dtype, device=piece.device)
    step = max(1, chunk // max(1, piece[0].numel()))
    for i in range(0, piece.shape[0], step):
        x = piece[i : i + step].to(torch.float64, copy=True)  # a copy even for a float64 source
        out[i : i + step].copy_(x.add_(offset).mul_(scale).sub_(offset).div_(divisor))
    return out


_CHUNK = 1 << 20  # elements per noise chunk: small reused temporaries, and enough chunks to draw in parallel


def _row_blocks(rows: int, block: int) -> int:
    """Rows per noise-power block: ``block`` when it divides the rows, else the whole tensor."""
    return block if 0 < block < rows and rows % block == 0 else rows


def _block_power(t: torch.Tensor, out_axis: int, b: int) -> torch.Tensor:
    """Mean square of ``t`` per block of ``b`` rows along ``out_axis`` (float32, one value per block)."""
    rows = t.movedim(out_axis, 0)
    flat = rows.reshape(rows.shape[0] // b, -1)
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32).square() / flat.shape[1]


def _per_row(values: torch.Tensor, t: torch.Tensor, out_axis: int) -> torch.Tensor:
    """Broadcast one value per row block of ``t`` (along ``out_axis``) back to ``t``'s shape."""
    size = t.shape[out_axis]
    rows = values.repeat_interleave(size // values.numel())
    shape = [1] * t.dim()
    shape[out_axis] = size
    return rows.reshape(shape)


def _gaussians(shape: list[int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _drawn_in_parallel(jobs: list[tuple[list[int], int]]) -> Iterator[torch.Tensor]:
    """``randn`` for each ``(shape, seed)`` in order, drawn on up to ``torch.get_num_threads()`` threads.

    torch draws Gaussians on one thread per generator, which made the noise the slowest step of a large
    grow; a generator per chunk lets the cores draw side by side, and the result does not depend on how
    many there are. At most twice as many chunks as threads are held at once.
    """
    threads = min(torch.get_num_threads(), len(jobs))
    if threads <= 1:
        yield from (_gaussians(shape, seed) for shape, seed in jobs)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: collections.deque[Future[torch.Tensor]] = collections.deque()
        for shape, seed in jobs:
            pending.append(pool.submit(_gaussians, shape, seed))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def add_noise_pairs(
    dest: torch.Tensor,
    choice: Choice,
    snr_db: float,
    generator: torch.Generator,
    out_axis: int = 0,
    block: int = 0,
) -> None:
    """Add ``+N`` and ``-N`` to each pair of input copies of a contracted axis (in place).

    The paired copies multiply identical input copies, so ``N x - N x = 0``: the function is unchanged, but
    gradient descent can now tell the copies apart. Noise power is ``mean((W/p)^2) / 10^(snr/10)`` per block
    of ``block`` output rows (along ``out_axis``; one head of a q/k/v projection when ``block`` is the head
    size), so every head gets the requested SNR whatever the spread of head norms (the paper's per-block rule;
    a per-tensor power would give small heads far more noise than signal). ``block=0``: the whole tensor.
    The noise is drawn a few row blocks at a time, each chunk from its own generator seeded from
    ``generator``: no tensor-sized temporaries, the chunks are drawn on all cores, and a seed gives the same
    clone on any machine.
    """
    ratio = 10.0 ** (-snr_db / 10.0)
    for axis in choice.contract:
        segs = choice.segments[axis]
        if len(segs) != 1 or segs[0][1] < 2:
            continue
        size, rep = segs[0]
        view = dest.unflatten(axis, (rep, size))
        copy = view.select(axis, 0)  # one input copy (W/p before any noise), with dest's axes
        rows_axis = out_axis if out_axis != axis else 0
        rows = copy.shape[rows_axis]
        b = _row_blocks(rows, block)
        step = b * max(1, _CHUNK // max(1, copy.numel() // rows * b))  # whole row blocks per chunk
        spans = [(start, min(rows, start + step)) for start in range(0, rows, step)]
        power = [
            _block_power(copy.narrow(rows_axis, a, z - a), rows_axis, b) for a, z in spans
        ]  # before noise
        tasks = [(k, a, z, signal) for k in range(rep // 2) for (a, z), signal in zip(spans, power)]
        seeds = torch.randint(0, 1 << 62, (len(tasks),), generator=generator).tolist()
        shapes = []
        for _, a, z, _ in tasks:
            shape = list(copy.shape)
            shape[rows_axis] = z - a
            shapes.append(shape)
        for (k, a, z, signal), noise in zip(tasks, _drawn_in_parallel(list(zip(shapes, seeds)))):
            gain = (signal * ratio / _block_power(noise, rows_axis, b).clamp_min(1e-30)).sqrt()
            noise = noise.mul_(_per_row(gain, noise, rows_axis)).to(dest.dtype)
            view.select(axis, 2 * k).narrow(rows_axis, a, z - a).add_(noise)
            view.select(axis, 2 * k + 1).narrow(rows_axis, a, z - a).sub_(noise)
        return
