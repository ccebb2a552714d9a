"""SALT_DS scoring (against a float64 per-token reference), caching and selection."""

from __future__ import annotations

import math
import statistics

import datasets
import numpy as np
import pytest
import torch

from hf_salt.salt_ds import NO_LEARNABLE_SCORE, kd_budget, score_dataset, select
from hf_salt.zoo import build_model

VOCAB, SEQ, TOP_K = 96, 16, 5


@pytest.fixture(scope="module")
def teacher():
    return build_model("llama-tiny", vocab_size=VOCAB, seed=0).eval()


def _greedy(model, first: int, length: int, pick) -> list[int]:
    """Build a sequence token by token: `pick(logits)` chooses the next one (test helper, slow on purpose)."""
    ids = [first]
    with torch.no_grad():
        for _ in range(length - 1):
            logits = model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(pick(logits)))
    return ids


@pytest.fixture(scope="module")
def data(teacher):
    """Random rows plus crafted ones: padding, -100 labels, nothing learnable, everything learnable."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (9, SEQ), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    mask[1, 11:] = 0  # right padding (labels there are real ids: the mask alone must exclude them)
    mask[2, :4] = 0  # left padding
    labels[3, 2:9] = -100
    labels[4, :] = -100  # no target at all
    ids[5] = torch.tensor(_greedy(teacher, 3, SEQ, lambda lg: lg.argmin()))  # never in the top-k
    labels[5] = ids[5]
    ids[6] = torch.tensor(_greedy(teacher, 3, SEQ, lambda lg: lg.argmax()))  # always in the top-k
    labels[6] = ids[6]
    return datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()}
    )


def reference_scores(model, row: dict, top_k: int) -> dict:
    """Plain computation: full logits in float64, one Python iteration per position."""
    ids = torch.tensor([row["input_ids"]])
    mask = torch.tensor([row["attention_mask"]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0].double()
    losses = []
    for t in range(ids.shape[1] - 1):
        target = row["labels"][t + 1]
        if target == -100 or row["attention_mask"][t + 1] == 0 or row["attention_mask"][t] == 0:
            continue
        logp = torch.log_softmax(logits[t], dim=-1)
        kth = torch.sort(logits[t], descending=True).values[top_k - 1]
        if logits[t, target] >= kth:
            losses.append(-float(logp[target]))
    if not losses:
        return {"median": NO_LEARNABLE_SCORE, "mean": NO_LEARNABLE_SCORE, "n": 0}
    return {"median": statistics.median(losses), "mean": statistics.fmean(losses), "n": len(losses)}


def _close(a: float, b: float) -> bool:
    return (a == b) if math.isinf(b) else abs(a - b) <= 1e-5


@pytest.mark.parametrize(("chunk_size", "top_k"), [(7, TOP_K), (None, TOP_K), (None, VOCAB)])
def test_scores_match_float64_reference(teacher, data, tmp_path, chunk_size, top_k):
    scored = score_dataset(
        data, teacher, top_k=top_k, batch_size=4, chunk_size=chunk_size, cache_dir=tmp_path
    )
    assert scored.column_names[:3] == ["input_ids", "attention_mask", "labels"]
    counts = []
    for i, row in enumerate(scored):
        ref = reference_scores(teacher, data[i], top_k)
        counts.append(ref["n"])
        assert row["salt_ds_num_learnable"] == ref["n"], i
        assert _close(row["salt_ds_median"], ref["median"]), (i, row["salt_ds_median"], ref["median"])
        assert _close(row["salt_ds_mean"], ref["mean"]), (i, row["salt_ds_mean"], ref["mean"])
        assert row["salt_ds_score"] == row["salt_ds_median"]
    if top_k == VOCAB:  # every target is learnable: the counts are the positions with a target
        assert counts[:5] == [SEQ - 1, 10, SEQ - 5, SEQ - 1 - 7, 0]
    else:  # the crafted rows do what they should
        assert counts[4] == 0 and counts[5] == 0 and counts[6] == SEQ - 1
        assert scored[5]["salt_ds_score"] == NO_LEARNABLE_SCORE == float("-inf")
    # both median parities occur
    assert {c % 2 for c in counts if c} == {0, 1}
    assert not any(math.isnan(s) for s in scored["salt_ds_score"])


def test_mean_statistic_and_ragged_rows(teacher, data, tmp_path):
    """`statistic="mean"` fills salt_ds_score; unpadded ragged rows score like their padded version."""
    rows = data.select([0, 1, 6])
    ragged = datasets.Dataset.from_dict(
        {"input_ids": [r["input_ids"][: sum(r["attention_mask"])] for r in rows]}  # row 1: right padding cut
    )
    scored = score_dataset(ragged, teacher, top_k=TOP_K, statistic="mean", batch_size=3, cache_dir=tmp_path)
    for i, row in enumerate(scored):
        ref = reference_scores(teacher, rows[i], TOP_K)
        assert _close(row["salt_ds_score"], ref["mean"])
        assert row["salt_ds_num_learnable"] == ref["n"]


def test_head_fallback_for_scaled_logits(data, tmp_path):
    """A model whose logits aren't head(hidden) (here: scaled by 3) is scored from its real logits."""
    model = build_model("llama-tiny", vocab_size=VOCAB, seed=0).eval()
    forward = model.forward

    def scaled(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * 3
        return out

    model.forward = scaled
    scored = score_dataset(data.select(range(4)), model, top_k=TOP_K, batch_size=2, cache_dir=tmp_path)
    for i, row in enumerate(scored):
        ref = reference_scores(model, data[i], TOP_K)
        assert _close(row["salt_ds_median"], ref["median"])


def test_gpt2_teacher(tmp_path):
    model = build_model("gpt2-tiny", vocab_size=VOCAB, seed=0).eval()
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(2)).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 10] * 3, "labels": ids})
    scored = score_dataset(ds, model, top_k=20, cache_dir=tmp_path)
    for i, row in enumerate(scored):
        ref = reference_scores(model, ds[i], 20)
        assert _close(row["salt_ds_median"], ref["median"]) and row["salt_ds_num_learnable"] == ref["n"]


def _count_forwards(model) -> list[int]:
    calls = [0]
    model.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cache_skips_teacher_forward(data, tmp_path):
    model = build_model("llama-tiny", vocab_size=VOCAB, seed=0).eval()
    calls = _count_forwards(model)
    first = score_dataset(data, model, top_k=TOP_K, batch_size=4, cache_dir=tmp_path)
    assert calls[0] >= 3  # 3 batches (+ the one-sequence head check)
    calls[0] = 0
    again = score_dataset(data, model, top_k=TOP_K, batch_size=4, cache_dir=tmp_path)
    assert calls[0] == 0
    assert again["salt_ds_score"] == first["salt_ds_score"]
    # a different k, statistic or teacher weights is a different cache entry
    score_dataset(data, model, top_k=TOP_K + 1, batch_size=4, cache_dir=tmp_path)
    assert calls[0] > 0
    calls[0] = 0
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    changed = score_dataset(data, model, top_k=TOP_K, batch_size=4, cache_dir=tmp_path)
    assert calls[0] > 0
    assert changed["salt_ds_score"] != first["salt_ds_score"]


def test_cache_next_to_a_saved_dataset(data, tmp_path):
    """A dataset loaded from disk caches next to its Arrow files, like `Dataset.map`."""
    data.save_to_disk(tmp_path / "ds")
    on_disk = datasets.load_from_disk(str(tmp_path / "ds"))
    model = build_model("llama-tiny", vocab_size=VOCAB, seed=0).eval()
    calls = _count_forwards(model)
    score_dataset(on_disk, model, top_k=TOP_K)
    assert calls[0] > 0 and list((tmp_path / "ds").glob("salt_ds-*.arrow"))
    calls[0] = 0
    score_dataset(datasets.load_from_disk(str(tmp_path / "ds")), model, top_k=TOP_K)
    assert calls[0] == 0


def test_scoring_errors(teacher, data, tmp_path):
    with pytest.raises(ValueError, match="vocabulary of 50"):
        score_dataset(data, build_model("llama-tiny", vocab_size=50, seed=0), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no 'input_ids'"):
        score_dataset(data.rename_column("input_ids", "ids"), teacher, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="statistic"):
        score_dataset(data, teacher, statistic="max", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="top_k"):
        score_dataset(data, teacher, top_k=0, cache_dir=tmp_path)


# ---------------------------------------------------------------- selection


@pytest.fixture()
def scored():
    """30 rows with known scores 0..29 (row i scores i, row 3 has nothing learnable)."""
    n = 30
    scores = [float(i) for i in range(n)]
    scores[3] = NO_LEARNABLE_SCORE
    return datasets.Dataset.from_dict(
        {
            "input_ids": [[i % 7, 1, 2] for i in range(n)],
            "salt_ds_score": scores,
            "salt_ds_median": scores,
            "salt_ds_mean": [-s for s in scores],
            "salt_ds_num_learnable": [0 if i == 3 else 5 for i in range(n)],
        }
    )


def _rows(ds) -> list[int]:
    return [int(s) for s in ds["salt_ds_median"]]


def test_select_top(scored):
    assert _rows(select(scored, n=4)) == [26, 27, 28, 29]
    assert _rows(select(scored, kd_steps=2, global_batch_size=3)) == [24, 25, 26, 27, 28, 29]
    assert kd_budget(2, 3) == 6
    assert len(select(scored, fraction=0.5)) == round(0.5 * 29)  # of the 29 eligible rows
    # "mean" column is the negated score here: its top is the lowest median, never the -inf row
    assert _rows(select(scored, n=3, statistic="mean")) == [0, 1, 2]


def test_select_band(scored):
    # 29 eligible rows ranked ascending; percentile of rank r = 100 r / 29
    whole = select(scored, band=(50, 100))
    expected = [s for s in range(30) if s != 3]
    expected = [expected[r] for r in range(29) if 100 * r / 29 >= 50]
    assert _rows(whole) == expected
    low = select(scored, band=(0, 10))
    assert _rows(low) == [0, 1, 2]  # ranks 0, 1, 2 (-inf row excluded)
    picked = select(scored, band=(50, 100), n=5, seed=0)
    assert len(picked) == 5 and set(_rows(picked)) <= set(expected)
    assert _rows(select(scored, band=(50, 100), n=5, seed=0)) == _rows(picked)
    assert _rows(select(scored, band=(50, 100), n=5, seed=1)) != _rows(picked)


def test_select_errors(scored):
    with pytest.raises(ValueError, match="larger than the pool"):
        select(scored, n=30)  # 29 eligible
    with pytest.raises(ValueError, match="larger than the band"):
        select(scored, band=(90, 100), n=10)
    with pytest.raises(ValueError, match="Empty selection"):
        select(scored, n=0)
    with pytest.raises(ValueError, match="Empty selection"):
        select(scored, band=(1, 2))
    with pytest.raises(ValueError, match="Empty selection"):
        select(scored.map(lambda r: {"salt_ds_num_learnable": 0}), n=1)
    with pytest.raises(ValueError, match="lacks column"):
        select(scored.remove_columns("salt_ds_score"), n=1)
    with pytest.raises(ValueError, match="how many"):
        select(scored)
    with pytest.raises(ValueError, match="only one"):
        select(scored, n=2, fraction=0.1)
    with pytest.raises(ValueError, match="band must"):
        select(scored, band=(60, 40))
    with pytest.raises(ValueError, match="student has a vocabulary of 5"):
        select(scored, n=2, vocab_size=5)  # ids go up to 6
    assert np.all(np.asarray(select(scored, n=2, vocab_size=7)["input_ids"]) < 7)


def test_cohere_logit_scale_is_applied_without_the_full_logits_fallback(data, tmp_path, caplog):
    """Cohere multiplies its logits by logit_scale: scoring applies the same transform as the KD loss, so
    head(hidden) matches the model's logits (no full-logits fallback) and the scores match the reference."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "cohere",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        logit_scale=0.25,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with caplog.at_level("WARNING"):
        scored = score_dataset(data.select(range(4)), model, top_k=TOP_K, batch_size=2, cache_dir=tmp_path)
    assert "scoring from the full logits" not in caplog.text
    for i, row in enumerate(scored):
        ref = reference_scores(model, data[i], TOP_K)
        assert _close(row["salt_ds_median"], ref["median"]) and row["salt_ds_num_learnable"] == ref["n"]
