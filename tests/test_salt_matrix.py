"""The SALT / SALT_DS matrix: every causal-LM type the installed transformers registers agrees with its own loss
and logits, or is refused by name.

Rows come from ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` at test time (plus a ``+router-aux`` row per MoE type).
Each row builds the type tiny with the matrices' builder (``benchmarks/tiny_models.py``), dropout off, output multipliers / logit scales /
soft-caps away from their defaults, the teacher an exact copy; one ``SALTTrainer`` step, an evaluation and a
``score_dataset`` pass are compared with the model's own loss and logits (``benchmarks/salt_matrix.py``,
which also writes the table in ``docs/salt.md``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("salt_matrix", REPO / "benchmarks" / "salt_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["salt_matrix"] = module
    spec.loader.exec_module(module)
    return module


matrix = _load()
ROWS = matrix.row_ids()

# families people train with SALT today: these must agree, never be refused or unbuildable
MUST_AGREE = {
    "llama",
    "gpt2",
    "qwen2",
    "qwen3",
    "mistral",
    "mixtral",
    "gemma",
    "gemma2",
    "gemma3_text",
    "cohere",
    "granite",
    "olmo2",
    "phi3",
    "smollm3",
    "gpt_neox",
    "opt",
}


def test_the_matrix_follows_the_installed_transformers() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = [r for r in ROWS if not r.endswith(matrix.AUX)]
    assert types == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and len(types) > 100
    assert "mixtral" + matrix.AUX in ROWS and "llama" + matrix.AUX not in ROWS


@pytest.mark.parametrize(
    ("model_type", "key"),
    [
        ("gemma2", "final_logit_softcapping"),
        ("cohere", "logit_scale"),
        ("granite", "logits_scaling"),
        ("falcon_h1", "lm_head_multiplier"),
        ("inkling_text", "logits_mup_width_multiplier"),
        ("recurrent_gemma", "logits_soft_cap"),
        ("mixtral" + matrix.AUX, "router_aux_loss_coef"),
    ],
)
def test_output_transforms_are_moved_away_from_their_defaults(model_type: str, key: str) -> None:
    """The matrix exercises each known output transform (a rename in transformers would otherwise go unseen)."""
    from transformers import AutoConfig

    model, changed = matrix.build(model_type)
    default = AutoConfig.for_model(model_type.removesuffix(matrix.AUX)).to_dict()[key]
    assert key in changed and changed[key] != default
    assert getattr(model.config, key) == changed[key]
    assert not any(model.training for model in model.modules())


def test_a_silent_difference_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison itself can fail: a reference loss off by 1e-4 relative makes the row ``differs``."""
    own = matrix.own_loss
    monkeypatch.setattr(matrix, "own_loss", lambda model, batch: own(model, batch) * (1 + 1e-4))
    row = matrix.run_row("llama")
    assert row.status == "differs" and "loss_ce + aux_loss" in row.reason and "eval_loss" in row.reason, row


@pytest.mark.parametrize("model_type", ROWS)
def test_every_causal_lm_type_agrees_or_is_refused(model_type: str) -> None:
    row = matrix.run_row(model_type)
    assert row.status in ("agrees", "refused", "not-built-here"), (
        f"{model_type}: {row.status}: {row.reason} (set away from defaults: {row.changed})"
    )
    if row.status == "agrees":
        assert set(row.diffs) == set(matrix.LIMITS)
    else:
        assert model_type not in MUST_AGREE, f"{model_type} {row.status}: {row.reason}"
    if row.status == "not-built-here":
        # only a type the builder cannot build with its defaults (or whose own loss fails) may be listed as not
        # built: moving fields away from their defaults must not hide a type
        with pytest.raises(Exception):  # noqa: B017 - any failure of the type itself
            model, _ = matrix.build(model_type, away=False)
            matrix.own_loss(model, matrix.batch_for(model))
