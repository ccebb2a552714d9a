"""The SALT / SALT_DS matrix: every causal-LM type the installed transformers registers, built tiny, trained one
step with ``SALTTrainer`` and scored with ``score_dataset``, against the model's own loss and logits.

    python benchmarks/salt_matrix.py                     # print the table
    python benchmarks/salt_matrix.py --write-docs        # refresh the table in docs/salt.md
    python benchmarks/salt_matrix.py llama gemma2        # some types only

Each row builds the type with the matrices' tiny builder (``tiny_models.tiny_config``, beside this script: the default
config, every width/depth/vocabulary field shrunk), fp32, with every dropout / layer-drop / router-jitter field
at 0 (so a training-mode forward is deterministic) and every output-side multiplier, logit scale and soft-cap
moved away from its default (:func:`away_from_defaults`). The teacher is an exact copy of the student. Checks:

- training (one ``SALTTrainer`` step, lr 0, ``kd_weight`` 0.5): the logged ``loss_ce`` and ``teacher_ce`` equal
  the cross-entropy of the model's own logits, ``loss_ce`` + ``aux_loss`` equals the model's own
  ``model(input_ids, labels=labels).loss``, ``loss_kd`` (student vs its copy) is 0 and the loss ``compute_loss``
  returns for the step is that of the model's own objective with KD mixed in (0.5 x CE + the aux term);
- ``trainer.evaluate()``'s ``eval_loss`` equals the model's own loss on the eval batch;
- SALT_DS: ``score_dataset``'s median score and learnable count per sequence equal a float64 reference computed
  from the model's own logits.

A MoE type whose config has ``output_router_logits`` gets a second row, ``<type> +router-aux``, with the router's
auxiliary loss switched on (its coefficient raised so it shows): the model's own loss then includes it.

Status of a row: ``agrees`` (all checks within :data:`RTOL`), ``refused`` (the trainer or the scorer raised a
``ValueError`` naming the model type or class), ``not-built-here`` (the type cannot be built tiny, or its own
forward with labels fails, here: no reference exists), ``differs`` (a check is off: silently wrong, the defect
this matrix exists to catch) or ``crash`` (any other exception: a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

RTOL = 1e-5  # relative tolerance on losses and scores (fp32 throughout)
KD_ATOL = 1e-6  # |loss_kd| between a model and its exact copy
# the bound of each check: relative differences, |loss_kd|, and the learnable count (an integer)
LIMITS = {
    "loss": RTOL,
    "loss_ce": RTOL,
    "loss_ce + aux_loss": RTOL,
    "teacher_ce": RTOL,
    "loss_kd": KD_ATOL,
    "eval_loss": RTOL,
    "salt_ds_score": RTOL,
    "salt_ds_count": 0.0,
}
KD_WEIGHT = 0.5
SEQ, TOP_K = 12, 5
AUX = "+router-aux"
BEGIN, END = "<!-- salt-matrix:begin -->", "<!-- salt-matrix:end -->"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "salt.md"

# a training-mode forward must equal the eval-mode reference: every stochastic knob off
_STOCHASTIC = re.compile(r"(dropout|drop_?out|pdrop|layerdrop|jitter|_noise$)", re.I)
# output-side transforms (the head and what follows it): moved away from their defaults
_SOFTCAP = re.compile(r"^(final_logit_softcapping|logits?_soft_?cap|output_logit_soft_cap)$")
_OUTPUT_SCALE = re.compile(
    r"^(logit_scale|logits_scaling|logits_mup_width_multiplier|.*(lm_head|output)_multiplier)$"
)
# other multipliers (embeddings, residuals, attention, SSM): moved too, they change what the head reads
_MULTIPLIER = re.compile(r"_multiplier$")
_SIZE = re.compile(r"dim", re.I)  # a multiplier of a width changes shapes, not outputs
_ROUTER_AUX_COEF = ("router_aux_loss_coef", "aux_loss_coef")


@dataclass
class Row:
    model_type: str
    status: str  # agrees | refused | not-built-here | differs | crash
    reason: str = ""
    path: str = ""  # which loss path the trainer took, where it says
    changed: dict[str, Any] = field(default_factory=dict)  # config fields set away from their defaults
    diffs: dict[str, float] = field(default_factory=dict)  # relative differences per check
    seconds: float = 0.0


def causal_lm_types() -> list[str]:
    from hypercloning_coverage import causal_lm_types as types

    return types()


def router_aux_types() -> list[str]:
    """Types whose config has ``output_router_logits`` (MoE models with a router auxiliary loss)."""
    from transformers import AutoConfig

    out = []
    for t in causal_lm_types():
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "output_router_logits" in AutoConfig.for_model(t).to_dict():
                out.append(t)
    return out


def row_ids() -> list[str]:
    """Every row of the matrix: each type, then ``<type> +router-aux`` for the MoE types."""
    return causal_lm_types() + [t + AUX for t in router_aux_types()]


def _configs(config: Any) -> list[Any]:
    from transformers import PretrainedConfig

    return [config, *(v for v in vars(config).values() if isinstance(v, PretrainedConfig))]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def away_from_defaults(config: Any, router_aux: bool = False) -> dict[str, Any]:
    """Turn off every stochastic field and move every output-side transform (and other multipliers) away from
    its default, in ``config`` and its sub-configs; return what was changed (``key: new value``)."""
    changed: dict[str, Any] = {}
    for c in _configs(config):
        for key, value in list(vars(c).items()):
            new: Any = None
            if _STOCHASTIC.search(key) and _is_number(value) and value != 0:
                new = 0.0
            elif _SOFTCAP.match(key) and (value is None or _is_number(value)):
                new = 3.0  # tight enough to bend logits of the size the randomised model produces
            elif _OUTPUT_SCALE.match(key) and (
                value is None or (_is_number(value) and isinstance(value, float))
            ):
                new = 2.5 if key == "logits_scaling" else round((value or 0.6) * 0.6, 6)
            elif _MULTIPLIER.search(key) and isinstance(value, float) and not _SIZE.search(key):
                new = round(value * 0.8, 6)
            elif router_aux and key == "output_router_logits":
                new = True
            elif router_aux and key in _ROUTER_AUX_COEF and _is_number(value):
                new = 0.25  # large enough that a missing aux term is far outside RTOL
            if new is not None and new != value:
                setattr(c, key, new)
                changed[key] = new
    return changed


def build(model_type: str, seed: int = 0, away: bool = True) -> tuple[Any, dict[str, Any]]:
    """The tiny fp32 causal LM of ``model_type`` (the matrices' builder, ``tiny_models``) with :func:`away_from_defaults`
    applied to its config before the weights are made; returns the model (eval mode) and what was changed.
    ``away=False``: only the ``+router-aux`` switch, the config otherwise as the builder makes it."""
    from tiny_models import randomise, tiny_config
    from transformers import AutoModelForCausalLM

    base, router_aux = (model_type[: -len(AUX)], True) if model_type.endswith(AUX) else (model_type, False)
    config = tiny_config(base)
    if away:
        changed = away_from_defaults(config, router_aux)
    else:
        changed = {
            k: v
            for k, v in away_from_defaults(copy.deepcopy(config), router_aux).items()
            if k in ("output_router_logits", *_ROUTER_AUX_COEF)
        }
        for key, value in changed.items():
            setattr(config, key, value)
    if (
        router_aux
        and "output_router_logits" not in changed
        and not getattr(config, "output_router_logits", 0)
    ):
        raise ValueError(f"{base} has no output_router_logits to switch on")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return randomise(model, seed).eval(), changed


def batch_for(model: Any, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two rows of random ids with a few ``-100`` labels (so token counts differ per row)."""
    from hf_salt.hypercloning.engine import text_config

    vocab = min(text_config(model.config).vocab_size or 0, model.get_input_embeddings().num_embeddings)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, SEQ), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 5] = -100
    return {"input_ids": ids, "labels": labels}


@torch.no_grad()
def own_loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """The model's own ``model(input_ids, labels=labels).loss`` in eval mode."""
    model.eval()
    loss = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
    if loss is None:
        raise ValueError(f"{type(model).__name__} returns no loss for labels")
    return float(loss)


@torch.no_grad()
def own_ce(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """The next-token cross-entropy of the model's own logits (eval mode, float64): its loss without any extra
    term such as a MoE router's auxiliary loss."""
    model.eval()
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits.double()
    targets = batch["labels"][:, 1:].reshape(-1)
    return float(
        torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets, ignore_index=-100
        )
    )


@torch.no_grad()
def reference_scores(model: Any, batch: dict[str, torch.Tensor], top_k: int) -> list[tuple[float, int]]:
    """SALT_DS's score (median of -log p over the positions whose target is in the top-k) and the learnable
    count per row, in float64 from the model's own logits (docs/salt_ds.md)."""
    model.eval()
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits.double()
    out = []
    for row in range(logits.shape[0]):
        losses = []
        for t in range(logits.shape[1] - 1):
            target = int(batch["labels"][row, t + 1])
            if target == -100:
                continue
            z = logits[row, t]
            if int((z > z[target]).sum()) < top_k:
                losses.append(float(torch.logsumexp(z, 0) - z[target]))
        if not losses:
            out.append((float("-inf"), 0))
            continue
        losses.sort()
        n = len(losses)
        out.append(((losses[(n - 1) // 2] + losses[n // 2]) / 2, n))
    return out


def _rel(a: float, b: float) -> float:
    if math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-6)


def _short(err: object, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", str(err)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names_model(err: BaseException, model: Any, model_type: str) -> bool:
    text = str(err)
    return isinstance(err, ValueError) and (model_type in text or type(model).__name__ in text)


def _loss_path(trainer: Any) -> str:
    """The path the trainer's probe picked for the student (and the teacher, where it differs)."""
    paths = trainer.output_paths
    student, teacher = paths.get("student"), paths.get("teacher")
    if student is None:
        return "not probed"
    text = "fused head" if student.fused else f"own logits: {student.reason}"
    if teacher is not None and teacher.head_exact != student.head_exact:
        text += "; teacher: " + ("fused head" if teacher.head_exact else f"own logits: {teacher.reason}")
    return text


def _salt_checks(
    model: Any, batch: dict[str, torch.Tensor], reference: float, ce: float, tmp: str
) -> tuple[dict, str]:
    """One SALT step (lr 0) and an evaluation, against the model's own loss ``reference`` and the cross-entropy
    of its own logits ``ce`` (they differ by the router aux loss of a MoE model that adds one).

    SALT's objective is ``(1 - w) CE + w KD`` plus the model's own extra term (``aux_loss`` in the logs), so with
    KD = 0 the step's loss is ``(1 - w) ce + (reference - ce)``."""
    from datasets import Dataset

    from hf_salt.salt.config import SALTConfig
    from hf_salt.salt.trainer import SALTTrainer

    data = Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    args = SALTConfig(
        output_dir=tmp,
        max_steps=1,
        kd_steps=1,
        kd_weight=KD_WEIGHT,
        learning_rate=0.0,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    teacher = copy.deepcopy(model)
    trainer = SALTTrainer(
        model=model, args=args, teacher_model=teacher, train_dataset=data, eval_dataset=data
    )
    step_losses: list[float] = []  # the loss the step trains on (the Trainer logs it rounded to 4 digits)
    compute_loss = trainer.compute_loss

    def spy(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        out = compute_loss(model, inputs, *args, **kwargs)
        if model.training:
            step_losses.append(float(out[0] if isinstance(out, tuple) else out))
        return out

    trainer.compute_loss = spy
    trainer.train()
    logs = next(r for r in trainer.state.log_history if "loss_ce" in r)
    metrics = trainer.evaluate()
    diffs = {
        "loss_ce": _rel(logs["loss_ce"], ce),
        "loss_ce + aux_loss": _rel(logs["loss_ce"] + logs.get("aux_loss", 0.0), reference),
        "teacher_ce": _rel(logs.get("teacher_ce", math.nan), ce),
        "loss_kd": abs(logs.get("loss_kd", math.nan)),
        "eval_loss": _rel(metrics.get("eval_loss", math.nan), reference),
        # the objective itself, not only its logged parts
        "loss": _rel(step_losses[0] if step_losses else math.nan, (1 - KD_WEIGHT) * ce + (reference - ce)),
    }
    return diffs, _loss_path(trainer)


def _salt_ds_check(model: Any, batch: dict[str, torch.Tensor], tmp: str) -> dict[str, float]:
    from datasets import Dataset

    from hf_salt.salt_ds import score_dataset

    data = Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    scored = score_dataset(data, model, top_k=TOP_K, batch_size=2, cache_dir=tmp, load_from_cache_file=False)
    ref = reference_scores(model, batch, TOP_K)
    score = max(_rel(s, r) for s, (r, _) in zip(scored["salt_ds_median"], ref))
    count = max(abs(n - rn) for n, (_, rn) in zip(scored["salt_ds_num_learnable"], ref))
    return {"salt_ds_score": score, "salt_ds_count": float(count)}


def run_row(model_type: str) -> Row:
    """Build ``model_type`` tiny and run the SALT and SALT_DS checks; never raises."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            model, changed = build(model_type)
            batch = batch_for(model)
            reference, ce = own_loss(model, batch), own_ce(model, batch)
            if not math.isfinite(reference):
                raise ValueError(f"its own loss is {reference}")
        except Exception as err:  # no tiny model or no reference loss here: listed with the reason
            return Row(model_type, "not-built-here", _short(err), seconds=time.perf_counter() - start)
        row = Row(model_type, "agrees", changed=changed)
        for what, check in (
            ("SALTTrainer", lambda tmp: _salt_checks(model, batch, reference, ce, tmp)),
            ("score_dataset", lambda tmp: (_salt_ds_check(model, batch, tmp), "")),
        ):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    diffs, path = check(tmp)
            except Exception as err:
                status = "refused" if _names_model(err, model, model_type.removesuffix(AUX)) else "crash"
                row.status, row.reason = status, f"{what}: {type(err).__name__}: {_short(err)}"
                break
            row.diffs.update(diffs)
            row.path = row.path or path
        if row.status == "agrees":
            bad = {k: v for k, v in row.diffs.items() if not v <= LIMITS[k]}
            if bad:
                row.status = "differs"
                row.reason = ", ".join(f"{k} off by {v:.2e}" for k, v in bad.items())
    row.seconds = time.perf_counter() - start
    return row


def markdown(rows: list[Row]) -> str:
    import transformers

    fused = sum(r.status == "agrees" and r.path.startswith("fused") for r in rows)
    counts = {
        "agree via the fused head": fused,
        "agree via the model's own logits": sum(r.status == "agrees" for r in rows) - fused,
        **{s: sum(r.status == s for r in rows) for s in ("refused", "not-built-here", "differs", "crash")},
    }
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        f"{len(rows)} rows for the causal-LM types of transformers {transformers.__version__}: {summary}. "
        f"`agrees`: `loss_ce` and `teacher_ce` within {RTOL:g} (relative) of the cross-entropy of the model's own "
        "logits, `loss_ce` + `aux_loss` and `eval_loss` within it of the model's own "
        f"`model(input_ids, labels=labels).loss`, `loss_kd` against an exact copy below {KD_ATOL:g}, the loss the "
        "step trains on equal to that of the model's own objective, and SALT_DS's median score and learnable "
        "count per sequence equal to a float64 reference from the model's own logits. The path is the one "
        "`SALTTrainer.output_paths` reports. Generated by `python benchmarks/salt_matrix.py --write-docs` "
        "(`tests/test_salt_matrix.py` runs the same rows).",
        "",
        "| model type | result | path / reason | fields set away from their defaults |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        changed = ", ".join(f"`{k}`={v}" for k, v in r.changed.items() if not _STOCHASTIC.search(k))
        status = r.status
        if r.status == "agrees":
            worst = max((v for k, v in r.diffs.items() if k != "salt_ds_count"), default=0.0)
            status = "agrees, fused" if r.path.startswith("fused") else "agrees, own logits"
            note = f"{r.path} (max diff {worst:.0e})"
        else:
            note = r.reason
        note = note.replace("|", "\\|")
        lines.append(f"| `{r.model_type}` | {status} | {note} | {changed} |")
    return "\n".join(lines)


def write_docs(rows: list[Row], path: Path = DOCS) -> None:
    text = path.read_text()
    block = f"{BEGIN}\n{markdown(rows)}\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## The model-type matrix\n\n{block}\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "types",
        nargs="*",
        help="rows (default: every registered causal-LM type, then the MoE +router-aux rows)",
    )
    ap.add_argument("--write-docs", action="store_true", help="replace the table in docs/salt.md")
    ap.add_argument("--docs", default=str(DOCS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for t in args.types or row_ids():
        row = run_row(t)
        rows.append(row)
        print(
            f"{row.status:14s} {t:34s} {row.seconds:5.2f}s {row.path} {row.reason}",
            file=sys.stderr,
            flush=True,
        )
    if args.write_docs:
        write_docs(rows, Path(args.docs))
    else:
        print(markdown(rows))
    return 0 if all(r.status in ("agrees", "refused", "not-built-here") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
