"""The coverage matrix: every causal-LM type the installed transformers registers, built tiny and grown.

    python benchmarks/hypercloning_coverage.py                  # print the table
    python benchmarks/hypercloning_coverage.py --write-docs     # refresh the table in docs/hypercloning.md
    python benchmarks/hypercloning_coverage.py --bf16 --write-docs   # ... and the bf16 difference table
    python benchmarks/hypercloning_coverage.py llama gemma2     # some types only

A row is ``exact`` when the clone at every width (2 and 3) matches the source's logits within 1e-5 on a
padded batch after ``save_pretrained`` and a plain ``AutoModelForCausalLM.from_pretrained``, and the
``verify=False`` clone at the first width is the same tensor for tensor; otherwise it is ``refused`` with a
reason from :data:`hf_salt.hypercloning.REASONS`. Anything else is a crash or ``wrong`` (a bug).

Project tooling, not shipped in the wheel: ``tests/test_hypercloning_matrix.py`` runs the same rows.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ATOL = 1e-5
WIDTHS = (2, 3)
SEQ = 12  # probe tokens: more than the tiny configs' 8-token sliding windows, so windows cut in
BEGIN, END = "<!-- coverage:begin -->", "<!-- coverage:end -->"
BF16_BEGIN, BF16_END = "<!-- bf16:begin -->", "<!-- bf16:end -->"


@dataclass
class Row:
    model_type: str
    status: str  # exact | refused | crash
    reason: str = ""
    detail: str = ""
    max_diff: float = 0.0
    seconds: float = 0.0
    bf16_diff: float | None = None  # max |dlogit| of a bf16 clone against the bf16 source (width 2)
    logit_scale: float = 0.0  # max |logit| of the source, for reading bf16_diff


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _logits(model, ids, mask) -> torch.Tensor:
    from hf_salt.hypercloning.probe import run_model

    return run_model(model, ids, mask).logits.double()


def _same_state(a, b) -> str:
    """The first tensor name where two models differ ('' when every tensor is bit-identical)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return f"tensor names {sorted(sa.keys() ^ sb.keys())[:3]}"
    return next((k for k in sa if not torch.equal(sa[k], sb[k])), "")


def run_row(
    model_type: str,
    widths: tuple[int, ...] = WIDTHS,
    reload: bool = True,
    bf16: bool = False,
    no_verify: bool = True,
) -> Row:
    """Build ``model_type`` tiny, grow it at every width, check logits (after a reload); never raises."""
    from tiny_models import build_tiny
    from transformers.utils import logging as hf_logging

    from hf_salt.hypercloning import clone
    from hf_salt.hypercloning.engine import text_config
    from hf_salt.hypercloning.probe import probe_inputs
    from hf_salt.hypercloning.refusals import HyperCloningRefused

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model = build_tiny(model_type)
            vocab = min(
                text_config(model.config).vocab_size or 0, model.get_input_embeddings().num_embeddings
            )
            ids, mask = probe_inputs(vocab, seq=SEQ, seed=1)  # longer than the tiny sliding windows
            reference = _logits(model, ids, mask)
        except Exception as err:  # the model cannot even run tiny here: a documented refusal
            return Row(model_type, "refused", "not-built-here", _short(err), 0.0, time.perf_counter() - start)
        worst = 0.0
        for n in widths:
            try:
                big = clone(model, n, warn_symmetry=False)
                differs = ""
                if no_verify and n == widths[0]:  # skipping the check must not change the clone
                    differs = _same_state(big, clone(model, n, warn_symmetry=False, verify=False))
                if differs:
                    return Row(
                        model_type,
                        "wrong",
                        f"width {n} verify=False",
                        f"differs from the verified clone at {differs}",
                        0.0,
                        time.perf_counter() - start,
                    )
                if reload:
                    with tempfile.TemporaryDirectory() as tmp:
                        big.save_pretrained(tmp)
                        big = _reload(tmp, type(big))
                diff = float((_logits(big, ids, mask) - reference).abs().max())
            except HyperCloningRefused as err:
                return Row(
                    model_type, "refused", err.reason, _short(err.detail), 0.0, time.perf_counter() - start
                )
            except Exception as err:  # a bug: the matrix test fails on it
                return Row(
                    model_type, "crash", type(err).__name__, _short(err), 0.0, time.perf_counter() - start
                )
            if not diff <= ATOL:
                return Row(
                    model_type,
                    "wrong",
                    f"width {n}",
                    f"max |dlogit| {diff:.2e}",
                    diff,
                    time.perf_counter() - start,
                )
            worst = max(worst, diff)
        row = Row(model_type, "exact", "", "", worst, 0.0, logit_scale=float(reference.abs().max()))
        if bf16:
            try:
                half = model.to(torch.bfloat16)
                big = clone(half, 2, warn_symmetry=False)
                row.bf16_diff = float((_logits(big, ids, mask) - _logits(half, ids, mask)).abs().max())
            except Exception as err:  # reported, not promised
                row.detail = f"bf16: {_short(err, 80)}"
    row.seconds = time.perf_counter() - start
    return row


def _reload(path: str, cls: type):
    """``AutoModelForCausalLM.from_pretrained``; the model's own class where the Auto map lacks its config."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        return cls.from_pretrained(path, dtype=torch.float32)


def _short(err: object, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", str(err)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(rows: list[Row]) -> str:
    from hf_salt.hypercloning.refusals import REASONS

    exact = sum(r.status == "exact" for r in rows)
    import transformers

    lines = [
        f"{exact} of {len(rows)} causal-LM model types of transformers {transformers.__version__} grow exactly "
        f"(fp32, widths {' and '.join(map(str, WIDTHS))}, max |Δlogit| ≤ {ATOL:g} on a padded 2 × {SEQ}-token batch "
        "(longer than the tiny configs' 8-token sliding windows) after save and reload; the `verify=False` clone "
        "is the same tensor for tensor). Generated by `python benchmarks/hypercloning_coverage.py --write-docs`.",
        "",
        "| model type | result | reason |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        if r.status == "exact":
            lines.append(f"| `{r.model_type}` | exact ({r.max_diff:.0e}) | |")
        else:
            what = REASONS.get(r.reason, (False, r.reason))[1]
            detail = r.detail.replace("|", "\\|")
            lines.append(f"| `{r.model_type}` | {r.status} | **{r.reason}**: {what}. {detail} |")
    return "\n".join(lines)


def bf16_markdown(rows: list[Row]) -> str:
    lines = [
        "bf16: the source cast to bf16 and its 2x clone grown in bf16, same padded batch; max |Δlogit| and the "
        "largest |logit| of the source for scale. Measured, not promised.",
        "",
        "| model type | max \\|Δlogit\\| bf16 | max \\|logit\\| |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        if r.status == "exact":
            value = f"{r.bf16_diff:.2g}" if r.bf16_diff is not None else (r.detail or "not measured")
            lines.append(f"| `{r.model_type}` | {value} | {r.logit_scale:.2g} |")
    return "\n".join(lines)


def _replace(text: str, begin: str, end: str, body: str, heading: str) -> str:
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    return text.rstrip() + f"\n\n{heading}\n\n{block}\n"


def write_docs(rows: list[Row], path: Path) -> None:
    text = _replace(path.read_text(), BEGIN, END, markdown(rows), "## Coverage")
    if any(r.bf16_diff is not None for r in rows):
        text = _replace(text, BF16_BEGIN, BF16_END, bf16_markdown(rows), "## bf16 differences per type")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("types", nargs="*", help="model types (default: every registered causal-LM type)")
    ap.add_argument("--write-docs", action="store_true", help="replace the table in docs/hypercloning.md")
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 clones of the exact types")
    ap.add_argument("--docs", default=str(Path(__file__).resolve().parents[1] / "docs" / "hypercloning.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for t in args.types or causal_lm_types():
        row = run_row(t, bf16=args.bf16)
        rows.append(row)
        print(
            f"{row.status:8s} {t:28s} {row.seconds:5.2f}s {row.reason} {row.detail}",
            file=sys.stderr,
            flush=True,
        )
    if args.write_docs:
        write_docs(rows, Path(args.docs))
    else:
        print(markdown(rows))
        if args.bf16:
            print("\n" + bf16_markdown(rows))
    return 0 if all(r.status in ("exact", "refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
