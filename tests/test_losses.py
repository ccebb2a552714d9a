"""The fused chunked loss equals the plain full-logits float64 reference, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_salt.salt.losses import (
    fused_kd_loss,
    kd_divergence,
    kd_loss_from_logits,
    resolve_backend,
    shift_targets,
    transform_logits,
)

B, T, HS, HT, V = 2, 12, 24, 16, 96


def _make(seed: int, ignore: str, with_bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, T, HS, generator=g)
    ws = torch.randn(V, HS, generator=g) * 0.3
    ht = torch.randn(B, T, HT, generator=g)
    wt = torch.randn(V, HT, generator=g) * 0.3
    labels = torch.randint(0, V, (B, T), generator=g)
    if ignore == "prefix":
        labels[:, :4] = -100
    elif ignore == "random":
        labels[torch.rand(B, T, generator=g) < 0.4] = -100
    elif ignore == "row":  # one sequence fully ignored
        labels[1] = -100
    bs = torch.randn(V, generator=g) * 0.1 if with_bias else None
    bt = torch.randn(V, generator=g) * 0.1 if with_bias else None
    return hs, ws, ht, wt, labels, bs, bt


def _reference(hs, ws, ht, wt, labels, bs, bt, *, s_tf=(None, None), t_tf=(None, None), norm=None, **kw):
    hs64 = hs.detach().double().requires_grad_(True)
    ws64 = ws.detach().double().requires_grad_(True)
    bs64 = bs.detach().double().requires_grad_(True) if bs is not None else None
    zs = transform_logits(F.linear(hs64, ws64, bs64), *s_tf)
    zt = transform_logits(F.linear(ht.double(), wt.double(), bt.double() if bt is not None else None), *t_tf)
    out = kd_loss_from_logits(zs, zt, labels, num_items_in_batch=norm, **kw)
    out.loss.backward()
    return out, hs64.grad, ws64.grad, (bs64.grad if bs64 is not None else None)


def _fused(hs, ws, ht, wt, labels, bs, bt, *, s_tf=(None, None), t_tf=(None, None), norm=None, chunk=5, **kw):
    hs = hs.clone().requires_grad_(True)
    ws = ws.clone().requires_grad_(True)
    bs = bs.clone().requires_grad_(True) if bs is not None else None
    out = fused_kd_loss(
        hs,
        ws,
        ht,
        wt,
        labels,
        student_bias=bs,
        teacher_bias=bt,
        student_logit_scale=s_tf[0],
        student_softcap=s_tf[1],
        teacher_logit_scale=t_tf[0],
        teacher_softcap=t_tf[1],
        num_items_in_batch=norm,
        chunk_size=chunk,
        backend="torch",
        **kw,
    )
    out.loss.backward()
    return out, hs.grad, ws.grad, (bs.grad if bs is not None else None)


def _assert_match(ref, got, atol=1e-5):
    (r, rgh, rgw, rgb), (f, fgh, fgw, fgb) = ref, got
    torch.testing.assert_close(f.loss.double(), r.loss, atol=atol, rtol=0)
    torch.testing.assert_close(f.ce_sum.double(), r.ce_sum, atol=atol * 10, rtol=1e-6)
    if r.kd_sum is not None:
        torch.testing.assert_close(f.kd_sum.double(), r.kd_sum, atol=atol * 10, rtol=1e-6)
        torch.testing.assert_close(f.teacher_ce_sum.double(), r.teacher_ce_sum, atol=atol * 10, rtol=1e-6)
    assert int(f.num_tokens) == int(r.num_tokens)
    torch.testing.assert_close(fgh.double(), rgh, atol=atol, rtol=0)
    torch.testing.assert_close(fgw.double(), rgw, atol=atol, rtol=0)
    if rgb is not None:
        torch.testing.assert_close(fgb.double(), rgb, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "divergence,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)]
)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("ignore", ["none", "prefix", "random"])
def test_fused_matches_reference(divergence, beta, temperature, ignore):
    data = _make(hash((divergence, beta, temperature, ignore)) % 1000, ignore)
    kw = dict(divergence=divergence, beta=beta, temperature=temperature, kd_weight=0.6)
    _assert_match(_reference(*data, **kw), _fused(*data, **kw))


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_fused_weights_and_chunking(kd_weight, chunk):
    data = _make(3, "random")
    kw = dict(kd_weight=kd_weight, temperature=1.5)
    _assert_match(_reference(*data, **kw), _fused(*data, chunk=chunk, **kw))


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_fused_softcap_logit_scale_bias_and_global_norm(divergence):
    data = _make(11, "prefix", with_bias=True)
    kw = dict(
        divergence=divergence,
        kd_weight=0.5,
        temperature=2.0,
        s_tf=(0.5, 3.0),  # logit scale (Cohere-like) then soft-capping (Gemma-like)
        t_tf=(None, 2.5),
        norm=torch.tensor(57),  # a global normaliser larger than the local count (GA / DDP)
    )
    _assert_match(_reference(*data, **kw), _fused(*data, **kw))


def test_fused_without_teacher_is_plain_causal_lm_ce():
    hs, ws, _, _, labels, _, _ = _make(5, "random")
    out, gh, gw, _ = _fused(hs, ws, None, None, labels, None, None)
    assert out.kd_sum is None and out.teacher_ce_sum is None
    # HF's own causal-LM loss from full logits (shifts internally) is the reference.
    hs2, ws2 = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
    logits = F.linear(hs2, ws2)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(out.loss, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(gh, hs2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(gw, ws2.grad, atol=1e-6, rtol=0)


def test_forward_kl_is_teacher_cross_entropy_minus_entropy():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, V, generator=g).double(), torch.randn(4, V, generator=g).double()
    p = zt.softmax(-1)
    ce_to_teacher = -(p * zs.log_softmax(-1)).sum(-1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(kd_divergence(zs, zt), ce_to_teacher - entropy)
    # temperature: the KD term is multiplied by tau^2
    tau = 3.0
    p3 = (zt / tau).softmax(-1)
    kl3 = (p3 * (p3.log() - (zs / tau).log_softmax(-1))).sum(-1)
    torch.testing.assert_close(kd_divergence(zs, zt, temperature=tau), tau * tau * kl3)
    # jsd with beta 0 / 1 are the two KLs; symmetric JSD is symmetric
    torch.testing.assert_close(kd_divergence(zs, zt, divergence="jsd", beta=0.0), kd_divergence(zs, zt))
    torch.testing.assert_close(
        kd_divergence(zs, zt, divergence="jsd", beta=1.0), kd_divergence(zs, zt, divergence="reverse_kl")
    )
    torch.testing.assert_close(
        kd_divergence(zs, zt, divergence="jsd"), kd_divergence(zt, zs, divergence="jsd"), atol=1e-12, rtol=0
    )


def test_shift_and_validation():
    labels = torch.tensor([[1, 2, 3, -100]])
    assert shift_targets(labels).tolist() == [[2, 3, -100, -100]]
    hs, ws, ht, wt, labels, _, _ = _make(0, "none")
    with pytest.raises(ValueError, match="divergence"):
        fused_kd_loss(hs, ws, ht, wt, labels, divergence="kl")
    with pytest.raises(ValueError, match="vocabulary"):
        fused_kd_loss(hs, ws, ht, wt[:-1], labels)
    with pytest.raises(ValueError, match="both"):
        fused_kd_loss(hs, ws, ht, None, labels)


def test_backend_selection_without_liger():
    cpu = torch.device("cpu")
    assert resolve_backend("auto", device=cpu, plain_logits=True, has_teacher=True) == "torch"
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="liger-kernel"):
            resolve_backend("liger", device=cpu, plain_logits=True, has_teacher=True)


def test_no_vocab_sized_tensor_kept_for_backward():
    """What the fused loss keeps for backward is hidden-sized or weight-sized, never [tokens, vocab]."""
    hs, ws, ht, wt, labels, _, _ = _make(1, "none")
    hs, ws = hs.requires_grad_(True), ws.requires_grad_(True)
    out = fused_kd_loss(hs, ws, ht, wt, labels, chunk_size=4, backend="torch")
    saved = sorted(tuple(t.shape) for t in out.loss.grad_fn.saved_tensors)
    assert saved == sorted([(B * T, HS), (V, HS), (0,)]), saved
    out.loss.backward()
    assert hs.grad.shape == hs.shape and ws.grad.shape == ws.shape


def _total_variation(s, t, beta):
    return 0.5 * (s.exp() - t.exp()).abs().sum(-1)


def test_divergence_registry_drives_the_loss_and_the_backend_choice(monkeypatch):
    """A registered divergence is what the torch backend computes; a backend without a kernel for it refuses
    (explicit choice) or is skipped (auto) instead of computing another divergence."""
    from hf_salt.salt.losses import DIVERGENCES, Divergence, register_divergence

    monkeypatch.setitem(DIVERGENCES, "tv", DIVERGENCES["forward_kl"])  # restored after the test
    register_divergence(Divergence("tv", _total_variation))
    data = _make(7, "random")
    _assert_match(
        _reference(*data, divergence="tv", kd_weight=0.6), _fused(*data, divergence="tv", kd_weight=0.6)
    )
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    monkeypatch.setattr("hf_salt.salt.losses.liger_available", lambda: True)
    kw = dict(device=cuda, plain_logits=True, has_teacher=True)
    assert resolve_backend("auto", divergence="forward_kl", **kw) == "liger"
    assert resolve_backend("auto", divergence="tv", **kw) == "torch"
    assert (
        resolve_backend("auto", divergence="jsd", device=cuda, plain_logits=False, has_teacher=True)
        == "torch"
    )
    with pytest.raises(ValueError, match="no kernel for kd_divergence='tv'"):
        resolve_backend("liger", divergence="tv", **kw)
    with pytest.raises(ValueError, match="soft-capping"):
        resolve_backend("liger", divergence="jsd", device=cuda, plain_logits=False, has_teacher=True)


def test_fused_loss_follows_autocast():
    """Under autocast the head matmuls run in the autocast dtype (as F.linear would), not in the fp32 buffers."""
    hs, ws, ht, wt, labels, _, _ = _make(5, "prefix")
    plain = fused_kd_loss(hs, ws, ht, wt, labels, kd_weight=0.5, chunk_size=7, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fused_kd_loss(hs, ws, ht, wt, labels, kd_weight=0.5, chunk_size=7, backend="torch")
    zs = F.linear(hs.bfloat16(), ws.bfloat16()).float()
    zt = F.linear(ht.bfloat16(), wt.bfloat16()).float()
    ref = kd_loss_from_logits(zs, zt, labels, kd_weight=0.5)
    torch.testing.assert_close(auto.loss, ref.loss, atol=1e-5, rtol=1e-5)
    assert abs(float(plain.loss) - float(ref.loss)) > 1e-4  # bf16 logits really differ from fp32 ones
