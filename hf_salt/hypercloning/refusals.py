"""Why a model cannot be grown: a documented set of reasons, each raised before anything is written."""

from __future__ import annotations

# reason code -> (impossible?, what it means); docs/hypercloning.md lists the same set
REASONS: dict[str, tuple[bool, str]] = {
    "alibi": (
        True,
        "ALiBi attention: each head's position bias slope depends on the number of heads, and some source slope "
        "is missing from the grown set",
    ),
    "alibi-dormant-heads": (
        False,
        "ALiBi attention whose grown slope set contains every source slope, in a family other than bloom and mpt: "
        "an exact clone exists (each source head at its own slope, the other heads dormant), but that head "
        "placement is built for bloom and mpt only",
    ),
    "width-dependent-function": (
        True,
        "a function of the width that tiling cannot keep (recomputed from the grown config at load time)",
    ),
    "not-pre-norm": (True, "depth growth: a block with zeroed output projections is not the identity"),
    "layout": (False, "a tensor whose grown shape is no whole number of copies of its parts"),
    "mismatch": (False, "no tiling layout found that keeps the function (names the first diverging module)"),
    "embeddings": (
        False,
        "the input or output embedding is not one table with a weight (e.g. one per codebook): not read yet",
    ),
    "config": (False, "the grown config is rejected by the model class"),
    "not-built-here": (False, "cannot be built here from its default config"),
}


class UnverifiedCloneWarning(UserWarning):
    """``verify=False`` and the clone differs from its source: returned, but never written by ``hf-salt grow``."""


class HyperCloningRefused(NotImplementedError):
    """The model cannot be grown exactly; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise KeyError(reason)
        self.reason = reason
        self.impossible = REASONS[reason][0]
        self.detail = detail
        kind = "impossible" if self.impossible else "not supported yet"
        super().__init__(f"HyperCloning refused ({reason}, {kind}): {detail}")
