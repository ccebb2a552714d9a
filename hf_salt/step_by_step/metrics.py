"""Label metrics for distilling step-by-step: exact match (the label accuracy), and SVAMP equations compared by value.

The official code scores SVAMP by running Python `eval()` on both the gold and the *generated* equation.
Model output is untrusted text, so here equations go through `safe_arithmetic`, a small AST evaluator that
allows numbers, + - * / ** (bounded), parentheses and unary signs, and rejects everything else.
Limits (documented in docs/step_by_step.md): `MAX_EXPRESSION_CHARS`, `MAX_NODES`, `MAX_EXPONENT`, `MAX_MAGNITUDE`;
equations are equal within `equation_accuracy`'s relative and absolute tolerance (1e-6).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np

MAX_EXPONENT = 64  # |b| in a ** b
MAX_MAGNITUDE = 1e100  # any intermediate result beyond this is rejected
MAX_EXPRESSION_CHARS = 512
MAX_NODES = 200

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class UnsafeExpressionError(ValueError):
    """The text is not a plain, bounded arithmetic expression."""


def safe_arithmetic(text: str) -> float:
    """Evaluate `text` as arithmetic (numbers, + - * / **, parentheses, unary +/-) without `eval`.

    Raises `UnsafeExpressionError` for anything else (names, calls, attributes, lambdas, strings),
    for exponents above `MAX_EXPONENT` in absolute value, for results beyond `MAX_MAGNITUDE`, and
    `ZeroDivisionError` for division by zero.
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpressionError("expression missing or too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError) as err:
        raise UnsafeExpressionError(f"not an arithmetic expression: {err}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise UnsafeExpressionError("expression too large")
    return _eval(tree.body)


def _check(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise UnsafeExpressionError("result out of bounds")
    return value


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        try:
            return _check(float(node.value))
        except OverflowError:  # an integer literal beyond float range (309+ digits)
            raise UnsafeExpressionError("number out of bounds") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise UnsafeExpressionError(f"exponent {right} exceeds {MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise ZeroDivisionError("0 to a negative power")
            if left < 0 and right != int(right):
                raise UnsafeExpressionError("complex result")
        try:
            return _check(_BINARY[type(node.op)](left, right))
        except OverflowError:
            raise UnsafeExpressionError("result out of bounds") from None
    raise UnsafeExpressionError(f"disallowed syntax: {type(node).__name__}")


def equation_value(text: str) -> float | None:
    """The value of an equation string, or None when it is not safe arithmetic (counts as wrong)."""
    try:
        return safe_arithmetic(text)
    except (UnsafeExpressionError, ZeroDivisionError):
        return None


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The official metric: decoded prediction string == decoded gold string (no normalisation)."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    return float(np.mean([p == r for p, r in zip(predictions, references)]))


def equation_accuracy(
    predictions: Sequence[str], references: Sequence[str], tolerance: float = 1e-6
) -> float:
    """SVAMP: share of predictions whose value equals the gold equation's (relative tolerance)."""
    _check_lengths(predictions, references)
    if not references:
        return 0.0
    hits = 0
    for p, r in zip(predictions, references):
        pv, rv = equation_value(p), equation_value(r)
        hits += int(
            pv is not None and rv is not None and math.isclose(pv, rv, rel_tol=tolerance, abs_tol=tolerance)
        )
    return hits / len(references)


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")


def compute_label_metrics(
    predictions: Sequence[str], references: Sequence[str], metric: str = "exact_match"
) -> dict[str, float]:
    """The metrics the trainer reports: `accuracy` (main; by value for `metric="equation"`, else the share of
    labels equal to the gold one, i.e. `exact_match`) and `exact_match` (the official string match)."""
    preds = [p.strip() for p in predictions]
    refs = [r.strip() for r in references]
    out = {"exact_match": exact_match(preds, refs)}
    if metric == "equation":
        out["accuracy"] = equation_accuracy(preds, refs)
    elif metric == "exact_match":
        out["accuracy"] = out["exact_match"]
    else:
        raise ValueError(f"metric must be 'exact_match' or 'equation', got {metric!r}.")
    return out
