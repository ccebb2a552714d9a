"""The growth engine: grown config -> empty destination -> every tensor tiled by its layout -> traced check.

Nothing here is written per family. The destination is built from the grown config on the meta device;
each destination tensor is matched to the source tensor of the same name, and the axes that grew (and by
how much) are read off the two shapes. Module types say which axes are summed against the input (and so
divided). Where that leaves a choice (fused sections, raw expert tensors, width-dependent scalars such as
Gemma's sqrt(hidden) embedding scale or MiniCPM's logit divisor), a traced forward picks the layout that
keeps every hidden state equal to the tiled source's. A clone that still differs is refused, naming the
first module whose output diverged.
"""

from __future__ import annotations

import itertools
import math
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .config_growth import grow_config, size_atoms
from .layout import Choice, Layout, add_noise_pairs, grow_tensor, plan_layout
from .probe import first_divergence, paired_sections, record_splits, run_module, tiled_error, trace
from .refusals import HyperCloningRefused

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
RESIDUAL_OUT = re.compile(
    r"(^|\.)(o_proj|out_proj|down_proj|c_proj|fc2|dense_4h_to_h|wo|w2|dense_out|output_proj)(\.(weight|bias))?$"
    r"|(attention|attn|self_attention)\.dense\.(weight|bias)$|(^|\.)output\.dense\.(weight|bias)$"
)


@dataclass
class Plan:
    """Everything decided before the destination's tensors are allocated."""

    dest: PreTrainedModel
    layouts: dict[tuple, Layout]  # group key -> layout (members: destination tensor names)
    source_of: dict[str, str]  # destination tensor name -> source tensor name
    zero: set[str]  # destination tensors that start at zero (new depth blocks' residual outputs)
    offsets: dict[str, float] = field(default_factory=dict)
    final_norm: str | None = None
    final_norm_index: int | None = None
    # destination tensor name -> (source tensor, dtype) -> grown tensor: a placement no tiling expresses (ALiBi)
    custom: dict[str, Callable[[torch.Tensor, torch.dtype], torch.Tensor]] = field(default_factory=dict)


def _unique_tensors(model: nn.Module) -> dict[str, list[str]]:
    """First name -> every name of each distinct parameter or persistent buffer (tied weights share one)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for b_name, b in module.named_buffers(recurse=False):
            if b is None or b_name in module._non_persistent_buffers_set:
                continue
            groups.setdefault(id(b), []).append(f"{mod_name}.{b_name}" if mod_name else b_name)
    return {names[0]: names for names in groups.values()}


def _weight_name(model: nn.Module, module: nn.Module | None) -> str:
    """The name of ``module.weight`` in ``model`` (by module path, so tied weights keep both names)."""
    if module is None:
        return ""
    return next((f"{k}.weight" if k else "weight" for k, v in model.named_modules() if v is module), "")


def _first_name(model: nn.Module, which: str) -> str:
    module = model.get_input_embeddings() if which == "input" else model.get_output_embeddings()
    if module is None:
        return ""
    return next((k for k, v in model.named_parameters() if v is module.weight), "")


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return getattr(module, leaf)


def _module_of(model: nn.Module, name: str) -> nn.Module | None:
    module_name = name.rpartition(".")[0]
    try:
        return model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return None


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    try:
        return config.get_text_config(decoder=True)
    except Exception:
        return config


def hidden_sizes(config: PretrainedConfig) -> set[int]:
    out = set()
    for c in (config, text_config(config)):
        for key in ("hidden_size", "n_embd", "d_model"):
            v = getattr(c, key, None) if key in vars(c) else None
            if isinstance(v, int) and not isinstance(v, bool):
                out.add(v)
    return out


def layer_count_key(config: PretrainedConfig) -> tuple[PretrainedConfig, str] | None:
    for c in (text_config(config), config):
        for key in LAYER_KEYS:
            if isinstance(vars(c).get(key), int):
                return c, key
    return None


def _find_layers(model: nn.Module, count: int) -> str | None:
    """The ModuleList holding the decoder blocks (the first one of length ``count``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count and name:
            return name
    return None


def depth_origin(layers: int, k: int, mode: str) -> list[tuple[int, bool]]:
    """For each new layer index: (source layer, is a new identity block)."""
    if mode == "interleave":
        return [(i // k, i % k != 0) for i in range(layers * k)]
    return [(i % layers, i >= layers) for i in range(layers * k)]


def grown_config(
    model: PreTrainedModel, n: int, m: int, depth: int, depth_mode: str, tie: bool | None
) -> PretrainedConfig:
    config = grow_config(model.config, n, m)
    if tie is not None:
        for c in {id(c): c for c in (config, text_config(config))}.values():
            if "tie_word_embeddings" in vars(c) or c is config:
                c.tie_word_embeddings = tie
    if depth > 1:
        found = layer_count_key(config)
        if found is None:
            raise HyperCloningRefused("config", "no layer-count field in the config, so depth cannot grow")
        c, key = found
        layers = getattr(c, key)
        setattr(c, key, layers * depth)
        for list_key in ("layer_types", "block_types", "layers_block_type"):
            types = vars(c).get(list_key)
            if isinstance(types, list) and len(types) == layers:
                setattr(c, list_key, [types[src] for src, _ in depth_origin(layers, depth, depth_mode)])
        if isinstance(vars(c).get("max_window_layers"), int):
            c.max_window_layers = c.max_window_layers * depth
    return config


def build_empty(model: PreTrainedModel, config: PretrainedConfig) -> PreTrainedModel:
    """``type(model)(config)`` with meta parameters and real buffers (computed from the grown config).

    No weight initialisation runs (``no_init_weights``): every parameter is assigned from the source
    afterwards, and a pass of ``_init_weights`` over the modules costs more than building them. Buffers keep
    the values the modules' constructors compute; the tied weights are tied explicitly.
    """
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    try:
        with init_empty_weights(include_buffers=False), no_init_weights(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dest = type(model)._from_config(config, dtype=next(model.parameters()).dtype)
            dest.tie_weights()  # init_weights (skipped) would have tied them
            return dest
    except Exception as err:  # a validator or an assertion of the model class
        raise HyperCloningRefused(
            "config", f"{type(model).__name__} rejects the grown config: {err}"
        ) from err


def _config_shapes(model: PreTrainedModel) -> dict[str, tuple[int, ...]]:
    """The shapes of the state dict that ``model``'s own config describes (built on the meta device)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():  # nothing allocated, no initialisation
            warnings.simplefilter("ignore")
            twin = type(model)._from_config(model.config, dtype=next(model.parameters()).dtype)
    except Exception:  # a constructor that needs real tensors: parameters on meta, buffers computed
        twin = build_empty(model, model.config)
    return {k: tuple(v.shape) for k, v in twin.state_dict().items()}


def _norm_offset(module: nn.Module, width: int) -> float:
    """1.0 for ``(1 + w)`` norms (Gemma), else 0.0: probed by running the norm with ``w = 0``."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return 0.0
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.zero_()
            bias = getattr(module, "bias", None)
            saved_bias = None
            if isinstance(bias, torch.Tensor):
                saved_bias = bias.detach().clone()
                bias.zero_()
            x = torch.randn(1, 3, width, dtype=weight.dtype, device=weight.device)
            out = run_module(module, (x,), {})
            if saved_bias is not None:
                bias.copy_(saved_bias)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    return 0.0 if out is None or float(out.abs().max()) == 0.0 else 1.0


def _final_norm(model: PreTrainedModel, src_trace) -> tuple[str | None, int | None]:
    """The module whose output feeds the output head (found in the traced forward), and its event index."""
    head = model.get_output_embeddings()
    head_name = next((k for k, v in model.named_modules() if v is head), None)
    if head_name is None:
        return None, None
    head_in = next((e for e in src_trace.events if e.module == head_name and e.kind == "in"), None)
    if head_in is None:
        return None, None
    for i in range(len(src_trace.events) - 1, -1, -1):
        e = src_trace.events[i]
        if e.kind != "out" or e.module == head_name or e.tensor.shape != head_in.tensor.shape:
            continue
        if not torch.equal(e.tensor, head_in.tensor):
            continue
        weight = getattr(model.get_submodule(e.module), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 1:
            return e.module, i
    return None, None


def plan(
    model: PreTrainedModel,
    dest: PreTrainedModel,
    n: int,
    m: int,
    depth: int,
    depth_mode: str,
    keep_tie: bool,
    final_norm: str | None,
) -> Plan:
    """Match every destination tensor to its source and list its candidate layouts; nothing is allocated."""
    src_tensors = _unique_tensors(model)
    src_alias = {alias: first for first, names in src_tensors.items() for alias in names}
    dst_tensors = _unique_tensors(dest)
    atoms = size_atoms(model.config, n, m)
    source_of: dict[str, str] = {}
    zero: set[str] = set()
    origin: dict[int, tuple[int, bool]] = {}
    layers_prefix = None
    if depth > 1:
        found = layer_count_key(model.config)
        count = getattr(found[0], found[1]) if found else 0
        layers_prefix = _find_layers(model, count)
        if layers_prefix is None:
            raise HyperCloningRefused("not-pre-norm", "no list of decoder blocks found to deepen")
        origin = dict(enumerate(depth_origin(count, depth, depth_mode)))
    pattern = re.compile(rf"^{re.escape(layers_prefix)}\.(\d+)\.(.*)$") if layers_prefix else None
    for first, names in dst_tensors.items():
        src_name = None
        for name in names:
            mapped, new_block = name, False
            match = pattern.match(name) if pattern else None
            if match:
                src_i, new_block = origin[int(match.group(1))]
                mapped = f"{layers_prefix}.{src_i}.{match.group(2)}"
            if mapped in src_alias:
                src_name = src_alias[mapped]
                if new_block and RESIDUAL_OUT.search(match.group(2)):  # type: ignore[union-attr]
                    zero.add(first)
                break
        if src_name is None:
            raise HyperCloningRefused(
                "layout", f"the grown model has a tensor {first!r} that the source does not have"
            )
        source_of[first] = src_name
    if keep_tie:  # the tied head is the embedding itself: grown once (as the embedding), tied afterwards
        emb_dest = _weight_name(dest, dest.get_input_embeddings())
        emb_src = src_alias.get(_first_name(model, "input"), "")
        for extra in [f for f, s in source_of.items() if s == emb_src and f != emb_dest]:
            del source_of[extra]
    missing = set(src_tensors) - set(source_of.values())
    if missing:
        raise HyperCloningRefused(
            "layout", f"source tensors {sorted(missing)[:3]} have no place in the grown model"
        )
    emb_name = _weight_name(dest, dest.get_input_embeddings())
    head_name = _weight_name(dest, dest.get_output_embeddings())
    root = math.sqrt(n)
    layouts: dict[tuple, Layout] = {}
    weight_key: dict[str, tuple] = {}
    order = sorted(source_of.items(), key=lambda item: item[0].endswith(".bias"))  # weights first
    for first, src_name in order:
        src = _tensor(model, src_name)
        dst = _tensor(dest, first)
        src_shape, dst_shape = tuple(src.shape), tuple(dst.shape)
        kind, scales = None, (1.0,)
        if not src.is_floating_point() or first in zero:
            kind = "copy"
        elif first == emb_name:
            kind, scales = "embedding", (1.0, 1 / root)
        elif first == head_name and not keep_tie:
            kind, scales = "head", (1.0, float(n), root)
        elif final_norm and keep_tie and first.startswith(final_norm + "."):
            kind, scales = "vector", (1 / n, 1 / root, 1.0, root / n)
        elif len(src_shape) == 2 and src_shape[0] == dst_shape[0] and src_shape[1] != dst_shape[1]:
            # a projection out of the residual stream to a fixed width: outside the blocks it may carry a
            # 1/sqrt(hidden) scale; inside, its input may be scaled by 1/hidden (Gemma 3n's AltUp router)
            scales = (1.0, float(n)) if re.search(r"\.\d+\.", first) else (1.0, root, 1 / root)
        owner = weight_key.get(first[: -len("bias")] + "weight") if first.endswith(".bias") else None
        if owner is not None and kind is None and len(src_shape) == 1 and first not in zero:
            weight_layout = layouts[owner]
            axis = 1 if weight_layout.kind == "conv1d" else 0
            if owner[1][axis] == src_shape[0] and owner[2][axis] == dst_shape[0]:
                weight_layout.members.append(first)  # a bias is laid out like its weight's output axis
                weight_layout.project[first] = axis
                continue
        if kind == "copy":
            if src_shape != dst_shape and first not in zero:  # an integer table of another size: recomputed
                continue
            layout: Layout | str = Layout([Choice(tuple(((s, 1),) for s in src_shape))], "copy")
        else:
            layout = plan_layout(
                first, _module_of(dest, first), src_shape, dst_shape, atoms, kind=kind, scales=scales
            )
        if isinstance(layout, str):
            raise HyperCloningRefused("layout", layout)
        special = first in (emb_name, head_name) or bool(final_norm and first.startswith(final_norm + "."))
        pattern_name = first if special else re.sub(r"\.\d+\.", ".#.", first)
        key = (pattern_name, src_shape, dst_shape, layout.kind, first in zero)
        if key in layouts:
            layouts[key].members.append(first)
        else:
            layout.members.append(first)
            layouts[key] = layout
        if first.endswith(".weight"):
            weight_key[first] = key
    return Plan(dest, layouts, source_of, zero)


def fill(model: PreTrainedModel, p: Plan, layout: Layout, dtype: torch.dtype, first_time: bool) -> dict:
    out = {}
    for name in layout.members:
        dst = _tensor(p.dest, name)
        if name in p.zero:
            grown = torch.zeros(tuple(dst.shape), dtype=dtype if dst.is_floating_point() else dst.dtype)
        elif name in p.custom:
            grown = p.custom[name](_tensor(model, p.source_of[name]), dtype)
        elif layout.kind == "copy":
            grown = _tensor(model, p.source_of[name]).detach().clone()
            if grown.is_floating_point():
                grown = grown.to(dtype)
        else:
            grown = grow_tensor(
                _tensor(model, p.source_of[name]),
                tuple(dst.shape),
                layout.choice_for(name),
                dtype=dtype,
                offset=p.offsets.get(name, 0.0),
            )
        if first_time:
            out[name] = grown
        else:
            with torch.no_grad():
                dst.copy_(grown)
    return out


def assign_all(model: PreTrainedModel, p: Plan, dtype: torch.dtype, progress: str | None = None) -> None:
    """Allocate and assign every destination tensor (each grown once, straight into its place)."""
    state: dict[str, torch.Tensor] = {}
    aliases = _unique_tensors(p.dest)
    layouts: Any = p.layouts.values()
    if progress:
        from tqdm.auto import tqdm

        layouts = tqdm(layouts, desc=progress, unit="group")
    for layout in layouts:
        for name, t in fill(model, p, layout, dtype, first_time=True).items():
            for alias in aliases[name]:
                state[alias] = t
    p.dest.load_state_dict(state, strict=False, assign=True)
    p.dest.tie_weights()
    still_meta = [k for k, v in p.dest.state_dict().items() if v.device.type == "meta"]
    if still_meta:
        raise HyperCloningRefused("layout", f"tensors left without a value: {still_meta[:3]}")


@dataclass
class Check:
    """The traced comparison used while searching layouts (``budget``: module re-runs and forwards left)."""

    model: PreTrainedModel
    ids: torch.Tensor
    mask: torch.Tensor
    source: Any
    hidden: set[int]
    n: int
    tol: float
    skip_from: int | None  # events from this index on are not compared (after a rescaled final norm)
    logits_only: bool
    budget: int = 400
    deadline: float | None = None  # wall clock: the search may take ~30 traced forwards of the clone
    skip_modules: set[str] = field(default_factory=set)  # rescaled on purpose: their own outputs differ
    max_logit_diff: float | None = None  # max |clone - source| logits of the latest traced forward
    forward_s: float = 0.0  # wall seconds of the first traced forward of the clone

    def divergence(self, dest: PreTrainedModel, keep_inputs: bool = False):
        self.budget -= 4  # a full forward costs about as much as a few module re-runs
        started = time.perf_counter()
        if self.deadline is not None and started > self.deadline:
            self.budget = 0
        t = trace(dest, self.ids, self.mask, keep_inputs=keep_inputs)
        if (
            t.logits is not None
            and self.source.logits is not None
            and t.logits.shape == self.source.logits.shape
        ):
            self.max_logit_diff = float((t.logits.double() - self.source.logits.double()).abs().max())
        else:
            self.max_logit_diff = None
        if self.logits_only:
            events = type(self.source)([], self.source.logits)
        elif self.skip_from is not None:
            events = type(self.source)(self.source.events[: self.skip_from], self.source.logits)
        else:
            events = self.source
        head = self.model.get_output_embeddings()
        head_name = next((k for k, v in self.model.named_modules() if v is head), "")
        if self.deadline is None:
            self.forward_s = time.perf_counter() - started
            self.deadline = time.perf_counter() + 30 * self.forward_s + 2.0
        skip = {(head_name, "in")} | {(name, "out") for name in self.skip_modules}
        return first_divergence(events, t, self.hidden, self.n, self.tol, skip), t


def _under(name: str, module: str) -> bool:
    return module == "" or name.startswith(module + ".")


def search(model: PreTrainedModel, p: Plan, check: Check, dtype: torch.dtype, max_rounds: int = 12) -> None:
    """Change ambiguous layouts until the traced forward of the clone is the tiled source's, or refuse."""
    was_training = p.dest.training
    p.dest.eval()  # dropout off: module-local re-runs must be deterministic
    try:
        _search(model, p, check, dtype, max_rounds)
    finally:
        p.dest.train(was_training)


PAIRED_BUDGET = 160  # module re-runs for the last resort (observed sections, contractions, undone axes)


def _search(model: PreTrainedModel, p: Plan, check: Check, dtype: torch.dtype, max_rounds: int) -> None:
    ambiguous = [lay for lay in p.layouts.values() if len(lay.choices) > 1]
    for _ in range(max_rounds):
        div, t = check.divergence(p.dest, keep_inputs=True)
        if div is None:
            return
        if check.budget <= 0:
            raise HyperCloningRefused("mismatch", f"{div.describe()} (layout search budget spent)")
        fixed = False
        targets = _local_targets(check, div, t)
        groups = [[lay for lay in ambiguous if any(_under(x, m) for x in lay.members)] for _, m in targets]
        # a small parent search covers its child's: start there instead
        while len(targets) > 1 and len(groups[1]) <= 4:
            targets, groups = targets[1:], groups[1:]
        for index, module in _local_targets(check, div, t):  # cheap first: the sections the forward cuts
            local = [lay for lay in ambiguous if any(_under(x, module) for x in lay.members)]
            if local and _local_search(model, p, check, index, module, t, local, dtype, observed="cuts"):
                fixed = True
                break
        for i, (index, module) in enumerate([] if fixed else targets):
            if i == 1 and _global_search(model, p, check, div, ambiguous, dtype, scalars_only=True):
                fixed = True  # a width-dependent scalar before widening the local search
                break
            local = [lay for lay in ambiguous if any(_under(x, module) for x in lay.members)]
            if local and _local_search(model, p, check, index, module, t, local, dtype):
                fixed = True
                break
        if not fixed:
            fixed = _global_search(model, p, check, div, ambiguous, dtype)
        if not fixed:
            fixed = _last_resort(model, p, check, div, t, ambiguous, dtype)
        if not fixed:
            raise HyperCloningRefused("mismatch", div.describe())
    div, _ = check.divergence(p.dest)
    if div is not None:
        raise HyperCloningRefused("mismatch", div.describe())


def _last_resort(
    model: PreTrainedModel, p: Plan, check: Check, div, t, ambiguous, dtype: torch.dtype
) -> bool:
    """The sections read again, cut alike in both models and joins included (``observed="paired"``).

    It has module re-runs and time of its own: the searches before it may have spent theirs, more so on a
    loaded machine."""
    check.budget = max(check.budget, PAIRED_BUDGET)
    check.deadline = max(check.deadline or 0.0, time.perf_counter() + 10 * check.forward_s + 1.0)
    for index, module in _local_targets(check, div, t):
        local = [lay for lay in ambiguous if any(_under(x, module) for x in lay.members)]
        if local and _local_search(model, p, check, index, module, t, local, dtype, observed="paired"):
            return True
    return False


def _local_targets(check: Check, div, t) -> list[tuple[int, str]]:
    """Modules to re-run: the diverging one (for a diverging output), then its compared parents."""
    names = [div.module] if div.kind == "out" else []
    parts = div.module.split(".")
    names += [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    out = []
    for name in names[:3]:
        if name not in t.inputs:
            continue
        for i in range(div.index, len(check.source.events)):
            e = check.source.events[i]
            if e.module == name and e.kind == "out" and e.call == 0:
                out.append((i, name))
                break
    return out


def _apply_observed_sections(
    model, p: Plan, check: Check, name: str, args, kwargs, local, dtype, paired: bool = False
) -> list[tuple[Layout, tuple]]:
    """Set fused axes to the sections the module's own forward cuts them into (source and clone alike).

    ``paired`` (the last resort): concatenations count as cuts, and a section is refined only where both models
    cut it alike (:func:`paired_sections`). Returns the layouts that changed, each with its segments from before.
    """
    src_inputs = check.source.inputs.get(name)
    if src_inputs is None:
        return []
    src_cuts = record_splits(model.get_submodule(name), *src_inputs, joins=paired)
    dst_cuts = record_splits(p.dest.get_submodule(name), args, kwargs, joins=paired)
    changed: list[tuple[Layout, tuple]] = []
    for lay in local:
        member = lay.members[0]
        src_shape = tuple(_tensor(model, p.source_of[member]).shape)
        dst_shape = tuple(_tensor(p.dest, member).shape)
        before = lay.choice.segments
        segs = list(before)
        for axis, (s, d) in enumerate(zip(src_shape, dst_shape)):
            if s == d:
                continue
            if paired:
                pairs = paired_sections(src_cuts, s, dst_cuts, d)
            else:
                a, b = src_cuts.sections(s), dst_cuts.sections(d)
                ok = a and b and len(a) == len(b) and not any(y % x for x, y in zip(a, b))
                pairs = list(zip(a, b)) if ok else None
            if pairs:
                segs[axis] = tuple((x, y // x) for x, y in pairs)
        if tuple(segs) == lay.choice.segments:
            continue
        choice = Choice(tuple(segs), lay.choice.contract, lay.choice.scale)
        if choice not in lay.choices:
            lay.choices.append(choice)
        lay.index = lay.choices.index(choice)
        fill(model, p, lay, dtype, first_time=False)
        changed.append((lay, before))
    return changed


def _observed_subsets(
    model, p: Plan, check: Check, changed: list[tuple[Layout, tuple]], dtype, matches
) -> bool:
    """Undo the observed sections on one or two axes: an axis of the same length as a cut one is not always
    cut (Zamba's q_proj output has the length of the ``[hidden; embeddings]`` join that feeds its input)."""
    units = [
        (lay, axis)
        for lay, before in changed
        for axis, segs in enumerate(lay.choice.segments)
        if segs != before[axis]
    ]
    if len(units) < 2:
        return False
    observed = {id(lay): lay.choice for lay, _ in changed}
    befores = {id(lay): before for lay, before in changed}
    tries = itertools.chain.from_iterable(itertools.combinations(units, k) for k in (1, 2))
    for undo in itertools.islice(tries, 80):
        if check.budget <= 0:
            break
        check.budget -= 1
        for lay, _ in changed:
            cur = observed[id(lay)]
            segs = tuple(
                befores[id(lay)][axis] if (lay, axis) in undo else seg
                for axis, seg in enumerate(cur.segments)
            )
            choice = Choice(segs, cur.contract, cur.scale)
            if choice not in lay.choices:
                lay.choices.append(choice)
            _set_layouts(model, p, [lay], [lay.choices.index(choice)], dtype)
        if matches():
            return True
    return False


def _observed_contractions(model, p: Plan, check: Check, changed: list[Layout], dtype, matches) -> bool:
    """With the observed sections kept, try which axis each changed raw tensor contracts (DBRX's flattened
    experts: ``w1`` and ``w2`` have the same shape, ``x @ w1.T`` contracts one axis and ``h @ w2`` the other)."""
    options = []
    for lay in changed:
        cur = lay.choice
        found = []
        for contract in dict.fromkeys(c.contract for c in lay.choices):
            choice = Choice(cur.segments, contract, cur.scale)
            if choice not in lay.choices:
                lay.choices.append(choice)
            found.append(lay.choices.index(choice))
        options.append(found)
    start = [lay.index for lay in changed]
    for combo in itertools.islice(itertools.product(*options), 64):
        if list(combo) == start or check.budget <= 0:
            continue
        check.budget -= 1
        _set_layouts(model, p, changed, combo, dtype)
        if matches():
            return True
    _set_layouts(model, p, changed, start, dtype)
    return False


def _combos(start: list[int], sizes: list[int], max_changes: int = 3):
    """Index tuples ordered by how many layouts differ from ``start`` (one change, then two, ...)."""
    yield tuple(start)
    for k in range(1, min(max_changes, len(start)) + 1):
        for subset in itertools.combinations(range(len(start)), k):
            alts = [[i for i in range(sizes[j]) if i != start[j]] for j in subset]
            for pick in itertools.product(*alts):
                combo = list(start)
                for j, i in zip(subset, pick):
                    combo[j] = i
                yield tuple(combo)


def _set_layouts(model: PreTrainedModel, p: Plan, layouts, indices, dtype: torch.dtype) -> None:
    """Switch each layout to its candidate index and refill only the tensors whose choice changed."""
    for lay, idx in zip(layouts, indices):
        if lay.index != idx:
            lay.index = idx
            fill(model, p, lay, dtype, first_time=False)


def _local_search(
    model,
    p: Plan,
    check: Check,
    index: int,
    name: str,
    t,
    local: list[Layout],
    dtype,
    observed: str | None = None,
) -> bool:
    """Try layouts of the tensors under one module, re-running only that module on its recorded inputs.

    ``observed``: only the sections the module's forward cuts (``"cuts"``), or the last resort (``"paired"``:
    cut alike in both models, joins included, one or two axes undone); ``None``: the candidate combinations.
    """
    module = p.dest.get_submodule(name)
    args, kwargs = t.inputs[name]
    expected = check.source.events[index].tensor

    def matches() -> bool:
        out = run_module(module, args, kwargs)
        err = None if out is None else tiled_error(expected, out, check.hidden, check.n)
        return err is not None and err <= check.tol

    if observed:
        before = [lay.index for lay in local]
        paired = observed == "paired"
        changed = _apply_observed_sections(model, p, check, name, args, kwargs, local, dtype, paired)
        if changed:
            check.budget -= 2
            if (
                matches()
                or _observed_contractions(model, p, check, [lay for lay, _ in changed], dtype, matches)
                or (paired and _observed_subsets(model, p, check, changed, dtype, matches))
            ):
                return True
            _set_layouts(model, p, local, before, dtype)
        return False
    start = [lay.index for lay in local]
    combos = itertools.islice(_combos(start, [len(lay.choices) for lay in local]), 1, 150)
    for combo in combos:
        if check.budget <= 0 or (check.deadline is not None and time.perf_counter() > check.deadline):
            break
        check.budget -= 1
        _set_layouts(model, p, local, combo, dtype)
        if matches():
            return True
    _set_layouts(model, p, local, start, dtype)
    return False


def _global_search(
    model, p: Plan, check: Check, div, ambiguous: list[Layout], dtype, scalars_only: bool = False
) -> bool:
    """Single changes, checked by a full traced forward: the divergence must move later or vanish.

    The final norm's gain and bias change together (they carry one scale).
    """
    norm = [lay for lay in ambiguous if p.final_norm and lay.members[0].startswith(p.final_norm + ".")]
    scalar = [
        [lay]
        for lay in ambiguous
        if lay.kind in ("embedding", "head") or len({c.scale for c in lay.choices}) > 1
    ]
    scalar = [b for b in scalar if b[0] not in norm]
    if norm and len({len(lay.choices) for lay in norm}) == 1:
        scalar.insert(0, norm) if div.module == "" else scalar.append(norm)
    others = (
        [] if scalars_only else [[lay] for lay in ambiguous if lay not in norm and [lay] not in scalar][:16]
    )
    # a module that first runs after the divergence cannot cause it: its layouts are not tried (each try is a
    # full traced forward, and the search has a time budget)
    first_run: dict[str, int] = {}
    for i, e in enumerate(check.source.events):
        first_run.setdefault(e.module, i)

    def can_reach(bundle: list[Layout]) -> bool:
        return any(
            lay.kind in ("embedding", "head") or first_run.get(x.rpartition(".")[0], -1) <= div.index
            for lay in bundle
            for x in lay.members
        )

    for bundle in [b for b in scalar + others if can_reach(b)]:
        start = [lay.index for lay in bundle]
        for idx in _scale_first(bundle[0], scalars_only):
            if idx == start[0] or check.budget <= 0:
                continue
            for lay in bundle:
                lay.index = idx
                fill(model, p, lay, dtype, first_time=False)
            rescaled = {
                x.rpartition(".")[0] for lay in bundle for x in lay.members if lay.choice.scale != 1.0
            }
            added = rescaled - check.skip_modules
            check.skip_modules |= added
            new, _ = check.divergence(p.dest)
            if new is None or new.index > div.index:
                return True
            check.skip_modules -= added
        for lay, idx in zip(bundle, start):
            lay.index = idx
            fill(model, p, lay, dtype, first_time=False)
    return False


def _scale_first(lay: Layout, scalars_only: bool) -> list[int]:
    """Candidate indices of ``lay``, those that change only its scale first (only those when ``scalars_only``).

    The segments were usually settled by a local search already; a width-dependent scalar is then one forward
    away instead of a sweep through every segmentation.
    """
    cur = lay.choice
    same = [i for i, c in enumerate(lay.choices) if c.segments == cur.segments and c.contract == cur.contract]
    return same if scalars_only else same + [i for i in range(len(lay.choices)) if i not in same]


def _with_scale(lay: Layout, scale: float, add: bool = False) -> bool:
    """Switch ``lay`` to the candidate with its current segments and contraction but ``scale`` (``add``: adding
    that candidate when the list lacks it)."""
    cur = lay.choice
    for i, c in enumerate(lay.choices):
        if c.segments == cur.segments and c.contract == cur.contract and math.isclose(c.scale, scale):
            lay.index = i
            return True
    if add:
        lay.choices.append(Choice(cur.segments, cur.contract, scale))
        lay.index = len(lay.choices) - 1
        return True
    return False


def embedding_scale_prior(model: PreTrainedModel, p: Plan, src_trace, ids: torch.Tensor, n: int) -> bool:
    """Read a ``sqrt(hidden)`` embedding scale (Gemma) off the source trace and pick its compensation up front.

    The first block's input divided by the embedding rows it was looked up from is a constant; when that
    constant is ``sqrt(hidden)`` the grown model multiplies by ``sqrt(n * hidden)``, so the embedding is
    divided by ``sqrt(n)`` (and a rescaled final norm before a tied head takes ``sqrt(n) / n``). Found from
    the one source forward already traced, instead of trial forwards of the clone; the search still checks it.
    """
    emb = model.get_input_embeddings()
    weight = getattr(emb, "weight", None)
    found = layer_count_key(model.config)
    prefix = _find_layers(model, getattr(found[0], found[1])) if found else None
    if weight is None or weight.dim() != 2 or prefix is None or n == 1:
        return False
    first = next(
        (e.tensor for e in src_trace.events if e.module == f"{prefix}.0" and e.kind == "in" and e.call == 0),
        None,
    )
    rows = weight.detach()[ids.clamp(max=weight.shape[0] - 1)].double()
    if first is None or tuple(first.shape) != tuple(rows.shape):
        return False
    x = first.double()
    big = rows.abs() > 1e-3 * float(rows.abs().max())
    if not bool(big.any()):
        return False
    ratio = float((x[big] / rows[big]).median())
    width = weight.shape[1]
    if not math.isclose(ratio, math.sqrt(width), rel_tol=1e-2) or not torch.allclose(
        x, rows * ratio, rtol=1e-2, atol=1e-3 * float(x.abs().max())
    ):
        return False
    emb_name = _weight_name(p.dest, p.dest.get_input_embeddings())
    # the scale the embedding takes: 1/sqrt(n), or the ratio of the two models' own scalars where the model keeps
    # its sqrt(hidden) as a rounded buffer (RecurrentGemma: a bf16 normalizer, bf16(sqrt(2h)) / bf16(sqrt(h)) is
    # not sqrt(2))
    emb_scale = _buffer_ratio(model, p.dest, ratio, n) or 1 / math.sqrt(n)
    changed = False
    for lay in p.layouts.values():
        if emb_name in lay.members and lay.kind == "embedding":
            changed = _with_scale(lay, emb_scale, add=True) or changed
        elif p.final_norm and lay.kind == "vector" and lay.members[0].startswith(p.final_norm + "."):
            changed = _with_scale(lay, 1 / (n * emb_scale), add=True) or changed
    return changed


def _buffer_ratio(model: PreTrainedModel, dest: PreTrainedModel, value: float, n: int) -> float | None:
    """source / clone of the scalar buffer that holds ``value`` in the source (computed from each one's config)."""
    dest_buffers = dict(dest.named_buffers())
    for name, b in model.named_buffers():
        if b.dim() != 0 or not b.is_floating_point() or not math.isclose(float(b), value, rel_tol=1e-5):
            continue
        other = dest_buffers.get(name)
        if other is None or other.device.type == "meta" or other.dim() != 0:
            continue
        grown = float(other)
        if grown and math.isclose(grown / float(b), math.sqrt(n), rel_tol=1e-2):
            # an fp32 sqrt(hidden) is sqrt(n) apart within its rounding: 1/sqrt(n) stays the scale there
            exact = math.isclose(grown / float(b), math.sqrt(n), rel_tol=1e-6)
            return None if exact else float(b) / grown
    return None


def head_size(config: PretrainedConfig) -> int:
    """The attention head size (``head_dim`` or hidden / heads; 0 when the config names neither)."""
    c = text_config(config)
    f = vars(c)
    if isinstance(f.get("head_dim"), int) and f["head_dim"] > 0:
        return f["head_dim"]
    hidden = next((f[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(f.get(k), int)), 0)
    heads = next(
        (
            f[k]
            for k in ("num_attention_heads", "n_head", "n_heads", "num_heads")
            if isinstance(f.get(k), int)
        ),
        0,
    )
    return hidden // heads if hidden and heads else 0


def lr_scales(p: Plan) -> dict[str, float]:
    """Tensor-name patterns (layer indices as ``*``) -> the factor their entries are of the source's.

    A tensor whose input axis was tiled n times holds the source's entries divided by n (a rescaled final norm
    or embedding: times its scale), so an optimizer step of the source's size is n times larger relative to it; :func:`hf_salt.hypercloning.optim.param_groups` reads
    these to keep the grown tensors' relative step the source's.
    """
    out: dict[str, float] = {}
    for lay in p.layouts.values():
        if lay.kind == "copy":
            continue
        for name in lay.members:
            if name in p.zero:
                continue
            if p.offsets.get(name):  # a (1 + w) norm: its entries are not a multiple of the source's
                continue
            choice = lay.choice_for(name)
            factor = choice.scale / math.prod(choice.segments[a][0][1] for a in choice.contract)
            if not math.isclose(factor, 1.0):
                out[re.sub(r"\.\d+\.", ".*.", name)] = factor
    return dict(sorted(out.items()))


def _noisy(layout: Layout) -> bool:
    return layout.kind in ("linear", "conv1d", "raw", "conv") and bool(layout.choice.contract)


def remove_noise(model: PreTrainedModel, p: Plan, dtype: torch.dtype) -> None:
    """Refill every tensor :func:`add_noise` touched from the source: the clone as it was before the noise."""
    for layout in p.layouts.values():
        if _noisy(layout):
            fill(model, p, layout, dtype, first_time=False)


def add_noise(p: Plan, snr_db: float, seed: int, block: int = 0) -> None:
    """Function-preserving +/- noise in every contracted layer except embeddings and the output head.

    The noise power is set per ``block`` output rows (the head size: one head of q/k/v), see ``add_noise_pairs``.
    """
    generator = torch.Generator().manual_seed(seed)
    for layout in p.layouts.values():
        if _noisy(layout):
            for name in layout.members:
                if name in p.zero or name in layout.project:
                    continue
                t = _tensor(p.dest, name)
                kept = [a for a in range(t.dim()) if a not in layout.choice.contract]
                if not kept:
                    out_axis = 0
                elif layout.kind in ("linear", "conv"):
                    out_axis = 0
                else:  # GPT-2 Conv1D [in, out], raw expert tensors [E, out, in] / [E, in, out]
                    out_axis = kept[-1]
                with torch.no_grad():
                    add_noise_pairs(t, layout.choice, snr_db, generator, out_axis=out_axis, block=block)


def check_source(model: PreTrainedModel) -> None:
    """The checkpoint's tensors must have the shapes its own config describes (else sizes are misread)."""
    shapes = _config_shapes(model)
    for name, t in model.state_dict().items():
        if name in shapes and shapes[name] != tuple(t.shape):
            raise HyperCloningRefused(
                "layout",
                f"tensor {name!r} has shape {tuple(t.shape)} but the model's config describes {shapes[name]}: "
                "the config does not match the weights",
            )


def check_depth(model: PreTrainedModel, depth_mode: str, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Refuse depth growth where a block with zeroed residual outputs is not the identity (before any work)."""
    import copy

    if depth_mode == "interleave" and getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError(
            "This config sets scale_attn_by_inverse_layer_idx=True: interleaving new blocks would move existing "
            "blocks to new indices and change their attention scale. Use depth_mode='append'."
        )
    found = layer_count_key(model.config)
    prefix = _find_layers(model, getattr(found[0], found[1])) if found else None
    if prefix is None:
        raise HyperCloningRefused("not-pre-norm", "no list of decoder blocks found to deepen")
    name = f"{prefix}.0"
    t = trace(model, ids, mask, keep_inputs=True)
    if name not in t.inputs:
        raise HyperCloningRefused("not-pre-norm", f"the first block {name!r} did not run in a forward pass")
    block = copy.deepcopy(model.get_submodule(name)).eval()
    zeroed = [k for k, _ in block.named_parameters() if RESIDUAL_OUT.search(k)]
    if not zeroed:
        raise HyperCloningRefused(
            "not-pre-norm", f"no residual-branch output projection recognised in {name!r}"
        )
    with torch.no_grad():
        for k in zeroed:
            _tensor(block, k).zero_()
    args, kwargs = t.inputs[name]
    x = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
    key = None
    if x is None:
        key = next(
            (k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()), None
        )
        x = kwargs.get(key) if key else None
    if x is None:
        raise HyperCloningRefused("not-pre-norm", f"cannot find the hidden states that {name!r} takes")
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype) * 2 + 0.5
    args = tuple(probe if a is x else a for a in args)
    if key:
        kwargs = {**kwargs, key: probe}
    out = run_module(block, args, kwargs)
    if out is None or out.shape != probe.shape or not torch.allclose(out, probe, atol=1e-5, rtol=1e-5):
        raise HyperCloningRefused(
            "not-pre-norm",
            f"{name!r} with its output projections ({', '.join(zeroed)}) at zero is not the identity: "
            "the block is not pre-norm residual (e.g. post-norm, do_layer_norm_before=False), so new blocks "
            "cannot start as identities",
        )
