"""The Liger backend computes, logs and guards exactly what the torch backend does (Liger's chunked loss runs on
CPU without torch.compile)."""

from __future__ import annotations

import pytest
import torch

from hf_salt.salt.losses import fused_kd_loss

pytest.importorskip(
    "liger_kernel.chunked_loss", reason="liger-kernel is not installed (pip install hf-salt[test])"
)

from test_salt_trainer import _args, _dataset, _model  # noqa: E402

from hf_salt.salt.trainer import SALTTrainer  # noqa: E402

B, T, HS, HT, V = 2, 10, 24, 16, 64


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    hs, ws = torch.randn(B, T, HS, generator=g), torch.randn(V, HS, generator=g) * 0.3
    ht, wt = torch.randn(B, T, HT, generator=g), torch.randn(V, HT, generator=g) * 0.3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = -100
    return hs, ws, ht, wt, labels


def _run(backend: str, data, **kw):
    hs, ws, ht, wt, labels = data
    hs, ws = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    out = fused_kd_loss(hs, ws, ht, wt, labels, chunk_size=8, backend=backend, num_items_in_batch=25, **kw)
    out.loss.backward()
    return out, hs.grad, ws.grad


@pytest.mark.parametrize(("divergence", "beta"), [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
def test_liger_components_equal_torch(divergence, beta):
    """Same loss, gradients and logged sums; loss_kd carries tau^2 (tau = 2: a missing tau^2 is 4x off)."""
    data = _data(3)
    kw = dict(kd_weight=0.6, temperature=2.0, divergence=divergence, beta=beta)
    (t, tgh, tgw), (g, ggh, ggw) = _run("torch", data, **kw), _run("liger", data, **kw)
    torch.testing.assert_close(g.loss, t.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.ce_sum, t.ce_sum, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g.kd_sum, t.kd_sum, atol=1e-4, rtol=1e-5)
    assert g.teacher_ce_sum is not None
    torch.testing.assert_close(g.teacher_ce_sum, t.teacher_ce_sum, atol=1e-4, rtol=1e-5)
    assert int(g.num_tokens) == int(t.num_tokens)
    torch.testing.assert_close(ggh, tgh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ggw, tgw, atol=1e-5, rtol=1e-4)


def test_trainer_logs_the_same_components_with_both_backends(tmp_path):
    logs = {}
    for backend in ("torch", "liger"):
        args = _args(tmp_path / backend, max_steps=2, kd_steps=2, logging_steps=2, kd_temperature=2.0)
        args.kd_loss_backend = backend
        trainer = SALTTrainer(
            model=_model(32, 0), args=args, teacher_model=_model(16, 1), train_dataset=_dataset()
        )
        trainer.train()
        logs[backend] = next(r for r in trainer.state.log_history if "loss" in r)
    torch_log, liger_log = logs["torch"], logs["liger"]
    for key in ("loss", "loss_ce", "loss_kd", "teacher_ce", "kd_weight"):
        assert key in liger_log, liger_log
        assert liger_log[key] == pytest.approx(torch_log[key], rel=1e-4), key


@pytest.mark.parametrize("backend", ["torch", "liger"])
def test_nan_teacher_raises_with_either_backend(tmp_path, backend):
    teacher = _model(16, 1)
    with torch.no_grad():  # finite weights (NaN weights are refused at train start) whose logits overflow
        teacher.lm_head.weight[3] = 3e38
    args = _args(tmp_path, max_steps=2, kd_steps=2, logging_steps=2, kd_loss_backend=backend)
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    with pytest.raises(FloatingPointError, match="training step 1"):
        trainer.train()
