"""The coverage matrix: every causal-LM type the installed transformers registers grows exactly or is refused.

Rows come from ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` at test time, so a new transformers release shows up as
new rows. Each row builds the type tiny in fp32, grows it 2x and 3x wide, saves and reloads it with
``AutoModelForCausalLM`` and compares logits on a padded batch (``benchmarks/hypercloning_coverage.py``, ``run_row``).
"""

from __future__ import annotations

import pytest
import torch
from hypercloning_coverage import causal_lm_types, run_row

from hf_salt.hypercloning import REASONS

# families people pretrain and grow today: these must stay exact
MUST_BE_EXACT = {
    "gemma3",
    "gemma3_text",
    "gemma4",
    "gemma4_text",
    "qwen3_5",
    "qwen3_5_text",
    "llama4",
    "llama4_text",
    "olmo2",
    "olmo3",
    "smollm3",
    "granite",
    "cohere",
    "cohere2",
    "stablelm",
    "falcon",
    "phi",
    "starcoder2",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "glm4",
    "gpt_oss",
    "mamba",
    "mamba2",
    "jamba",
    "llama",
    "gpt2",
    "opt",
    "gpt_neox",
    "bloom",
    "mpt",
    "gemma3n_text",
    "recurrent_gemma",
    "deepseek_v4",
    "laguna",
    "lfm2_moe",
    "cohere_compass_text",
    "xmod",
    "dbrx",
    "nemotron_h",
    "zamba",
    "zamba2",
}
TYPES = causal_lm_types()


def test_the_matrix_follows_the_installed_transformers() -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert TYPES == sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) and len(TYPES) > 100


@pytest.mark.parametrize("model_type", TYPES)
def test_every_causal_lm_type_grows_exactly_or_is_refused(model_type: str) -> None:
    row = run_row(model_type)
    assert row.status in ("exact", "refused"), f"{model_type}: {row.status} {row.reason} {row.detail}"
    if row.status == "refused":
        assert row.reason in REASONS, row.reason
        assert model_type not in MUST_BE_EXACT, f"{model_type} refused: {row.reason}: {row.detail}"
    else:
        assert row.max_diff <= 1e-5


def test_the_matrix_tooling_is_not_shipped() -> None:
    """The tiny builders and this matrix are the project's tooling (benchmarks/), not modules of the wheel."""
    import importlib.util

    import hypercloning_coverage
    import tiny_models

    for module in (hypercloning_coverage, tiny_models):
        assert "hf_salt" not in module.__name__ and module.__file__.split("/")[-2] == "benchmarks"
    for name in ("hf_salt.hypercloning.coverage", "hf_salt.hypercloning.tiny"):
        assert importlib.util.find_spec(name) is None, name


def test_the_tiny_builder_shrinks_every_size_the_growth_grows() -> None:
    """The matrices' tiny models read the growth's own table (`FIELD_ROLES`): no width, MLP or head field of a
    text config is left at full size (a field the growth learns is shrunk for every type at once)."""
    import warnings

    from tiny_models import HIDDEN, tiny_config
    from transformers import PretrainedConfig

    from hf_salt.hypercloning.config_growth import FIELD_ROLES, SKIP_SUBCONFIGS

    built, large = 0, {}
    for model_type in TYPES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = tiny_config(model_type)
        except Exception:  # listed as not-built-here by the matrix itself
            continue
        built += 1
        subs = [
            v for k, v in vars(config).items() if isinstance(v, PretrainedConfig) and k not in SKIP_SUBCONFIGS
        ]
        for c in (config, *subs):
            for key, value in vars(c).items():
                if (
                    key in FIELD_ROLES
                    and isinstance(value, int)
                    and not isinstance(value, bool)
                    and value > 2 * HIDDEN
                ):
                    large[f"{model_type}.{key}"] = value
    assert built > 180 and large == {}


def test_a_width_dependent_scale_is_named_in_the_refusal() -> None:
    """Dory (nGPT) keeps every hidden state on the unit sphere, an L2 norm rather than an RMS norm, so a tiled
    state comes out n^-1/2 times the tiled source's: the refusal says so rather than only "no layout found"."""
    if "dory" not in TYPES:
        pytest.skip("dory is not registered by the installed transformers")
    from tiny_models import build_tiny

    from hf_salt.hypercloning import HyperCloningRefused, clone

    for n, scale in ((2, "0.7071 (= n^-1/2, n = 2)"), (3, "0.5774 (= n^-1/2, n = 3)")):
        with pytest.raises(HyperCloningRefused) as err:
            clone(build_tiny("dory"), n, warn_symmetry=False)
        assert err.value.reason == "mismatch"
        assert "'model.layers.0.input_layernorm'" in err.value.detail
        assert f"it is {scale} times the tiled source's output in every entry" in err.value.detail


def test_the_last_resort_has_time_of_its_own_after_a_slow_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zamba2's shared block is fixed only by the last resort, after the whole-forward search; on a loaded
    machine that search can spend the deadline and the re-run budget, and the clone must still come out exact."""
    import time

    from tiny_models import build_tiny

    from hf_salt.hypercloning import clone, engine

    searched = []
    real = engine._global_search

    def slow_global_search(model, p, check, div, ambiguous, dtype, scalars_only=False):
        found = real(model, p, check, div, ambiguous, dtype, scalars_only=scalars_only)
        if not found and not scalars_only:  # as if each of its forwards had taken far longer
            searched.append(check.budget)
            check.budget, check.deadline = 0, time.perf_counter() - 1.0
        return found

    monkeypatch.setattr(engine, "_global_search", slow_global_search)
    model = build_tiny("zamba2")
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    big = clone(model, 2, warn_symmetry=False)
    assert searched, "the whole-forward search did not run before the last resort"
    with torch.no_grad():
        assert float((big(ids).logits - model(ids).logits).abs().max()) <= 1e-5
