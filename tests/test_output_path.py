"""SALT trains on the model's own objective: the output-path probe (hf_salt.salt.output_path).

Models built tiny from their configs, dropout off, output transforms set away from their defaults; the teacher is
an exact copy of the student, so KD is 0 and every logged CE must equal the model's own
``model(input_ids, labels=input_ids).loss``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import randomise, tiny_config
from transformers import AutoModelForCausalLM

from hf_salt import SALTConfig, SALTTrainer


def _tiny(model_type: str, **overrides) -> torch.nn.Module:
    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    torch.manual_seed(0)
    return randomise(AutoModelForCausalLM.from_config(config))


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, min(model.config.vocab_size, 90), (2, 12), generator=gen)
    return {"input_ids": ids, "labels": ids.clone()}


def _own_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def _trainer(tmp_path, student, teacher) -> SALTTrainer:
    args = SALTConfig(
        output_dir=str(tmp_path), use_cpu=True, kd_weight=0.5, kd_steps=2, max_steps=4, report_to=[]
    )
    trainer = SALTTrainer(model=student, args=args, teacher_model=teacher)
    trainer.kd_callback.resolve(args.max_steps)
    trainer.kd_state.kd_weight = 0.5
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _step(trainer: SALTTrainer, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    return float(loss.detach()), trainer._metrics.pop()


@pytest.mark.parametrize(
    ("model_type", "overrides", "fused"),
    [
        ("llama", {}, True),
        ("gemma2", {"final_logit_softcapping": 3.0}, True),
        ("granite", {"logits_scaling": 4.0}, True),
        # a multiplier under a name the fused head does not know: the model's own logits
        ("falcon_h1", {"lm_head_multiplier": 3.0}, False),
        # a transform (dense + activation + norm) before the projection: the model's own logits
        ("bert", {"is_decoder": True}, False),
    ],
)
def test_logged_losses_are_the_models_own(tmp_path, model_type, overrides, fused) -> None:
    student = _tiny(model_type, **overrides)
    batch = _batch(student)
    own = _own_loss(student, batch)
    trainer = _trainer(tmp_path, student, copy.deepcopy(student))
    loss, logged = _step(trainer, batch)
    assert trainer.output_paths["student"].fused is fused
    assert logged["loss_ce"] == pytest.approx(own, rel=1e-5)
    assert logged["teacher_ce"] == pytest.approx(own, rel=1e-5)
    assert logged["loss_kd"] == pytest.approx(0.0, abs=1e-6)
    assert loss == pytest.approx(0.5 * own, rel=1e-5)  # (1 - w) CE + w KD with KD = 0
    # evaluation (w = 0) reports the model's own loss too
    trainer.model.eval()
    with torch.no_grad():
        assert float(trainer.compute_loss(trainer.model, dict(batch))) == pytest.approx(own, rel=1e-5)


def test_fused_and_logits_paths_give_the_same_gradients(tmp_path) -> None:
    """Forcing the model's-logits path on a model the fused head handles: same loss, same gradients."""
    student = _tiny("llama")
    teacher = _tiny("llama", hidden_size=32)
    torch.manual_seed(3)
    teacher = randomise(teacher, seed=3)
    batch = _batch(student)
    grads = []
    for force_logits in (False, True):
        model = copy.deepcopy(student)
        trainer = _trainer(tmp_path, model, copy.deepcopy(teacher))
        trainer._output_paths = trainer._probe_output_paths(model)
        if force_logits:
            path = trainer._output_paths["student"]
            trainer._output_paths["student"] = type(path)(path.model_type, False, True, None, "forced", 0.0)
        loss, logged = _step(trainer, batch)
        loss_t = trainer.compute_loss(model, dict(batch))
        model.zero_grad()
        loss_t.backward()
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters()}, loss, logged))
    (g_fused, l_fused, m_fused), (g_logits, l_logits, m_logits) = grads
    assert m_fused["loss_kd"] > 1e-4  # different teacher: KD is really on
    assert l_logits == pytest.approx(l_fused, rel=1e-5)
    for key in ("loss_ce", "loss_kd", "teacher_ce"):
        assert m_logits[key] == pytest.approx(m_fused[key], rel=1e-5), key
    for name, g in g_fused.items():
        torch.testing.assert_close(g_logits[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_moe_router_aux_loss_is_added_as_the_model_adds_it(tmp_path) -> None:
    student = _tiny("mixtral", output_router_logits=True, router_aux_loss_coef=0.5)
    batch = _batch(student)
    student.eval()
    with torch.no_grad():
        out = student(**batch)
    own, aux = float(out.loss), float(out.aux_loss)
    assert aux > 0
    trainer = _trainer(tmp_path, student, copy.deepcopy(student))
    loss, logged = _step(trainer, batch)
    path = trainer.output_paths["student"]
    assert not path.fused and path.aux_loss_coef == 0.5
    assert logged["loss_ce"] == pytest.approx(own - 0.5 * aux, rel=1e-5)
    assert logged["aux_loss"] == pytest.approx(0.5 * aux, rel=1e-5)
    assert loss == pytest.approx(0.5 * (own - 0.5 * aux) + 0.5 * aux, rel=1e-5)
    trainer.model.eval()
    with torch.no_grad():  # evaluation: exactly the model's own loss, aux term included
        assert float(trainer.compute_loss(trainer.model, dict(batch))) == pytest.approx(own, rel=1e-5)


def test_model_whose_loss_is_not_its_logits_ce_is_refused_by_name(tmp_path) -> None:
    """BartForCausalLM's own loss is not the next-token CE of its logits: SALT refuses it at the first step."""
    student = _tiny("bart")
    trainer = _trainer(tmp_path, student, copy.deepcopy(student))
    with pytest.raises(ValueError, match=r"the student \(bart\).*not the next-token cross-entropy"):
        _step(trainer, _batch(student))


def test_probe_leaves_rng_and_train_flags_as_they_were(tmp_path) -> None:
    student = _tiny("llama", attention_dropout=0.1)
    student.train()
    student.model.layers[0].eval()  # a user's choice the probe must not undo
    trainer = _trainer(tmp_path, student, copy.deepcopy(student))
    before = torch.random.get_rng_state()
    paths = trainer._probe_output_paths(student)
    assert paths["student"].fused
    assert torch.equal(torch.random.get_rng_state(), before)
    assert student.training and not student.model.layers[0].training and student.model.layers[1].training
