"""A traced forward of source and clone: the first module whose output is not the tiled source output.

Every module's first tensor input and output are recorded in call order. An event is compared when the
clone's tensor has the source's shape, or only its last axis grew ``n``-fold from the hidden size (the
residual stream, attention and MLP outputs): it must equal the tiled source tensor. Internal tensors of
other widths (fused projections, head-split views) are not compared; what they feed is.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Event:
    module: str
    kind: str  # "in" | "out"
    call: int
    tensor: torch.Tensor


@dataclass
class Trace:
    events: list[Event]
    logits: torch.Tensor | None
    inputs: dict[str, tuple[tuple, dict]] = field(default_factory=dict)  # first call's (args, kwargs)


@dataclass
class Divergence:
    index: int  # position in the source's event list (len(events) for the logits)
    module: str
    kind: str
    error: float
    scale: float | None = None  # the clone's output is this multiple of the tiled source's, entry by entry
    n: int = 1

    def describe(self) -> str:
        where = (
            "the logits"
            if self.module == ""
            else f"the {'input' if self.kind == 'in' else 'output'} of {self.module!r}"
        )
        text = f"{where} differ from the tiled source by {self.error:.3g}"
        if self.scale is None:
            return text
        powers = {"n^-1/2": -0.5, "n^1/2": 0.5, "1/n": -1.0, "n": 1.0}
        named = next(
            (k for k, e in powers.items() if math.isclose(self.scale, self.n**e, rel_tol=1e-3)), None
        )
        return (
            f"{text}; it is {self.scale:.4g}{f' (= {named}, n = {self.n})' if named else ''} times the tiled "
            "source's output in every entry: a scale that depends on the width (e.g. a norm over the sum, not "
            "the mean, of squares)"
        )


def _uniform_scale(small: torch.Tensor, large: torch.Tensor, n: int, tol: float) -> float | None:
    """``r`` when ``large`` is ``r * tile(small)`` in every entry (``r`` not 1), else None."""
    if large.shape != small.shape:
        small = small.repeat(*([1] * (small.dim() - 1)), n)
    a, b = large.double(), small.double()
    power = float((b * b).sum())
    if not (power > 0 and torch.isfinite(a).all()):
        return None
    r = float((a * b).sum()) / power
    residual = float((a - r * b).abs().max()) / max(1.0, float(b.abs().max()))
    return r if residual <= tol and abs(r - 1.0) > 10 * tol else None


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else None
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    if isinstance(x, dict):
        for key in ("hidden_states", "last_hidden_state", "input_embeds", "inputs_embeds", "x"):
            t = _first_tensor(x.get(key))
            if t is not None:
                return t
        return None
    for key in ("last_hidden_state", "hidden_states", "logits"):
        t = getattr(x, key, None)
        if isinstance(t, torch.Tensor):
            return _first_tensor(t)
    return None


def probe_inputs(
    vocab: int, batch: int = 2, seq: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded token ids and an attention mask with padding (the second row's last two tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 3:
        mask[1, -2:] = 0
    return ids, mask


def run_model(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> Any:
    """One eval-mode, no-cache forward; a model that takes no attention mask runs without one."""
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"use_cache": False}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return model(
                input_ids=ids.to(device), attention_mask=None if mask is None else mask.to(device), **kwargs
            )
        except TypeError:
            return model(input_ids=ids.to(device), **kwargs)


def trace(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None, *, keep_inputs: bool = False
) -> Trace:
    """Forward ``model`` once, recording every module's first tensor input and output in call order."""
    events: list[Event] = []
    calls: dict[str, int] = {}
    inputs: dict[str, tuple[tuple, dict]] = {}
    handles = []

    def pre(name: str):
        def hook(module, args, kwargs):
            t = _first_tensor(args) if args else _first_tensor(kwargs)
            if t is not None:
                events.append(Event(name, "in", calls.get(name, 0), t.detach().clone()))
            if keep_inputs and name not in inputs:
                inputs[name] = (args, dict(kwargs))

        return hook

    def post(name: str):
        def hook(module, args, kwargs, output):
            t = _first_tensor(output)
            if t is not None:
                events.append(Event(name, "out", calls.get(name, 0), t.detach().clone()))
            calls[name] = calls.get(name, 0) + 1

        return hook

    was_training = model.training
    model.eval()
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(pre(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post(name), with_kwargs=True))
        out = run_model(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    logits = getattr(out, "logits", None)
    return Trace(events, None if logits is None else logits.detach(), inputs)


def tiled_error(small: torch.Tensor, large: torch.Tensor, hidden: set[int], n: int) -> float | None:
    """``max |large - tile(small)|`` relative to the source's scale, or None when not comparable."""
    if large.shape == small.shape:
        expected = small
    elif (
        large.dim() == small.dim()
        and large.shape[:-1] == small.shape[:-1]
        and small.shape[-1] in hidden
        and large.shape[-1] == n * small.shape[-1]
    ):
        expected = small.repeat(*([1] * (small.dim() - 1)), n)
    else:
        return None
    a, b = large.double(), expected.double()
    if not a.numel():
        return 0.0
    worst = float((a - b).abs().max())
    if math.isfinite(worst):  # no NaN or inf on either side (the common case): two reductions
        return worst / max(1.0, float(b.abs().max()))
    both_nan = torch.isnan(a) & torch.isnan(b)
    diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
    if torch.isnan(diff).any():
        return float("inf")
    scale = max(1.0, float(b.nan_to_num().abs().max()) if b.numel() else 1.0)
    return float(diff.max()) / scale if diff.numel() else 0.0


def first_divergence(
    src: Trace,
    dst: Trace,
    hidden: set[int],
    n: int,
    tol: float,
    skip: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> Divergence | None:
    """The first compared event where the clone is not the tiled source, then the logits."""
    by_key = {(e.module, e.kind, e.call): e for e in dst.events}
    for i, e in enumerate(src.events):
        # inputs are not compared: a module may legitimately see a rescaled input (a norm undoes it)
        if e.kind == "in" or (e.module, e.kind) in skip:
            continue
        other = by_key.get((e.module, e.kind, e.call))
        if other is None:
            continue
        err = tiled_error(e.tensor, other.tensor, hidden, n)
        if err is not None and err > tol:
            return Divergence(i, e.module, e.kind, err, _uniform_scale(e.tensor, other.tensor, n, tol), n)
    if src.logits is not None and dst.logits is not None:
        err = tiled_error(src.logits, dst.logits, set(), 1)
        if err is None or err > tol:
            return Divergence(len(src.events), "", "out", float("inf") if err is None else err)
    return None


def run_module(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Re-run one module on recorded inputs (a cheap check of a candidate layout)."""
    with torch.no_grad(), contextlib.suppress(Exception):
        return _first_tensor(module(*args, **kwargs))
    return None


class SplitRecorder:
    """Records where a forward cuts tensors apart (``split``/``chunk``/``narrow``/slices, a flat parameter viewed
    as blocks): fused sections.

    ``bounds[size]`` is the set of cut points seen on axes of that size. A fused projection's output axis is
    cut into its sections there, which names the layout the shapes alone leave open.
    """

    def __init__(self) -> None:
        self.bounds: dict[int, set[int]] = {}

    def _add(self, size: int, cuts: list[int]) -> None:
        inner = {c for c in cuts if 0 < c < size}
        if inner:
            self.bounds.setdefault(size, set()).update(inner)

    def record(self, name: str, args: tuple, kwargs: dict) -> None:
        if name in ("cat", "concat", "concatenate") and args and isinstance(args[0], (list, tuple)):
            self._record_join(args[0], args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0)))
            return
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
            return
        t = args[0]
        if name in ("split", "split_with_sizes"):
            sizes = (
                args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_sizes"))
            )
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            size = t.shape[dim]
            if isinstance(sizes, int) and sizes > 0:
                self._add(size, list(range(sizes, size, sizes)))
            elif isinstance(sizes, (list, tuple)):
                acc, cuts = 0, []
                for s in sizes:
                    acc += int(s)
                    cuts.append(acc)
                self._add(size, cuts)
        elif name == "chunk":
            chunks = args[1] if len(args) > 1 else kwargs.get("chunks")
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            size = t.shape[dim]
            if isinstance(chunks, int) and chunks > 1 and size % chunks == 0:
                self._add(size, list(range(size // chunks, size, size // chunks)))
        elif name in ("view", "reshape") and isinstance(t, nn.Parameter):
            # a flat parameter viewed with its first axis split (DBRX's experts: [E * F, H] as [E, F, H])
            shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
            if len(shape) == t.dim() + 1 and tuple(shape[2:]) == tuple(t.shape[1:]) and shape[1] > 0:
                self._add(t.shape[0], list(range(shape[1], t.shape[0], shape[1])))
        elif name == "narrow":
            dim, start, length = (list(args[1:4]) + [None] * 3)[:3]
            if isinstance(dim, int) and isinstance(start, int) and isinstance(length, int):
                self._add(t.shape[dim], [start, start + length])
        elif name == "__getitem__" and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(i is None or isinstance(i, torch.Tensor) for i in index):
                return
            if Ellipsis in index:
                k = index.index(Ellipsis)
                dims = list(range(k)) + list(range(t.dim() - (len(index) - k - 1), t.dim()))
                index = index[:k] + index[k + 1 :]
            else:
                dims = list(range(len(index)))
            for dim, i in zip(dims, index):
                if isinstance(i, slice) and i.step in (None, 1) and dim < t.dim():
                    size = t.shape[dim]
                    start, stop, _ = i.indices(size)
                    self._add(size, [start, stop])

    def _record_join(self, parts: list | tuple, dim: int) -> None:
        """A concatenation is a split read backwards: Zamba's ``[hidden; embeddings]`` feeds one norm and q/k/v,
        so their joined axis is two sections, each grown on its own."""
        parts = [x for x in parts if isinstance(x, torch.Tensor) and x.dim() > 0 and x.numel() > 0]
        if len(parts) < 2 or len({x.dim() for x in parts}) != 1:
            return
        acc, cuts = 0, []
        for x in parts:
            acc += x.shape[dim]
            cuts.append(acc)
        self._add(acc, cuts)

    def sections(self, size: int) -> list[int] | None:
        """Section lengths of an axis of ``size``, refined by the cuts seen on sections of each length."""
        cuts = self._cuts(size, 0, depth=0)
        if not cuts:
            return None
        points = [0, *sorted(cuts), size]
        return [b - a for a, b in zip(points, points[1:])]

    def _cuts(self, size: int, offset: int, depth: int) -> set[int]:
        own = self.bounds.get(size, set())
        out = {offset + c for c in own}
        if depth > 3:
            return out
        points = [0, *sorted(own), size]
        for a, b in zip(points, points[1:]):
            if b - a != size and b - a in self.bounds:
                out |= self._cuts(b - a, offset + a, depth + 1)
        return out

    def _own(self, size: int) -> list[int] | None:
        cuts = self.bounds.get(size)
        if not cuts:
            return None
        points = [0, *sorted(cuts), size]
        return [b - a for a, b in zip(points, points[1:])]


def paired_sections(
    source: SplitRecorder, size: int, dest: SplitRecorder, dest_size: int, depth: int = 0
) -> list[tuple[int, int]] | None:
    """The sections of a source axis and of its grown axis, side by side: ``[(length, grown length), ...]``.

    A section is refined only where the source and the clone cut it into as many parts, each grown by a whole
    factor: cuts that one side alone shows belong to another axis of the same length (a sequence padded to
    the scan's chunk of 128 in one model, a width of 128 in the other), not to the fused projection.
    ``None`` when the two axes are not cut alike at all.
    """
    a, b = source._own(size), dest._own(dest_size)
    if not a or not b or len(a) != len(b) or any(y % x for x, y in zip(a, b)):
        return None
    out: list[tuple[int, int]] = []
    for x, y in zip(a, b):
        inner = paired_sections(source, x, dest, y, depth + 1) if depth < 3 and x != size else None
        out += inner or [(x, y)]
    return out


def record_splits(module: nn.Module, args: tuple, kwargs: dict, joins: bool = False) -> SplitRecorder:
    """Run ``module`` once on recorded inputs and collect its cut points (``joins``: concatenations too)."""
    from torch.overrides import TorchFunctionMode

    recorder = SplitRecorder()
    names = {"split", "split_with_sizes", "chunk", "narrow", "__getitem__", "view", "reshape"}
    if joins:
        names |= {"cat", "concat", "concatenate"}

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, f_args=(), f_kwargs=None):
            f_kwargs = f_kwargs or {}
            name = getattr(func, "__name__", "")
            if name in names:
                with contextlib.suppress(Exception):
                    recorder.record(name, f_args, f_kwargs)
            return func(*f_args, **f_kwargs)

    with torch.no_grad(), contextlib.suppress(Exception), _Mode():
        module(*args, **kwargs)
    return recorder
