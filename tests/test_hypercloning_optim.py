"""Training a clone at its recorded learning-rate scales: an AdamW step on an exact clone is the clone of the
source's step (hf_salt.hypercloning.optim), so the clone keeps the head start it was grown for."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_scheduler,
)

from hf_salt.hypercloning import GrownLRMixin, clone, lr_scales, ramp_lr_scales, scale_param_groups
from hf_salt.zoo import build_model


def _llama():
    return build_model("llama-micro", vocab_size=256, seed=0)


def _gpt2():  # Conv1D weights: the contracted axis is 0, not 1
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        "gpt2",
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=256,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return AutoModelForCausalLM.from_config(cfg)


def _exact_clone(model, n=2):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no noise on purpose: the step must stay exact
        return clone(model, n)


def _train(model, ids, steps, scaled):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-12)
    if scaled:
        scale_param_groups(opt, model)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def test_the_clone_records_which_tensors_it_divided():
    big = _exact_clone(_llama())
    record = big.config.hypercloning["lr_scale"]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert record[f"model.layers.*.self_attn.{proj}.weight"] == 0.5
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert record[f"model.layers.*.mlp.{proj}.weight"] == 0.5
    assert record["model.norm.weight"] == big.config.hypercloning["final_norm_scale"]  # the tied head's norm
    assert not any("embed" in k for k in record)  # rows are copied, not divided
    per_param = lr_scales(big)
    assert per_param["model.layers.1.mlp.down_proj.weight"] == 0.5
    assert "model.embed_tokens.weight" not in per_param
    assert lr_scales(_llama()) == {}  # not a clone: nothing to scale
    # the record survives a save and a plain transformers reload
    assert big.config.to_dict()["hypercloning"]["lr_scale"] == record


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_adamw_steps_on_a_clone_are_the_clone_of_the_source_steps(build):
    src = build()
    big = _exact_clone(src)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    stepped_src = _train(copy.deepcopy(src), ids, steps=3, scaled=False)
    probe = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    scaled_big = _train(copy.deepcopy(big), ids, steps=3, scaled=True)
    plain_big = _train(copy.deepcopy(big), ids, steps=3, scaled=False)
    with torch.no_grad():
        want = stepped_src(input_ids=probe).logits
        scaled = scaled_big(input_ids=probe).logits
        plain = plain_big(input_ids=probe).logits
    assert (scaled - want).abs().max().item() < 1e-4  # the clone moved exactly as its source did
    assert (plain - want).abs().max().item() > 1e-2  # one learning rate for all: relative steps n x larger


def test_the_trainer_mixin_scales_the_groups_and_the_schedule_keeps_the_ratio(tmp_path):
    big = _exact_clone(_llama())
    ids = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, weight_decay=0.1, warmup_steps=2,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        per_device_train_batch_size=4, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = type("GrownTrainer", (GrownLRMixin, Trainer), {})(model=big, args=args, train_dataset=data)
    trainer.train()
    groups = trainer.optimizer.param_groups
    name_of = {id(p): n for n, p in big.named_parameters()}
    scales = lr_scales(big)
    lrs = trainer.lr_scheduler.get_last_lr()
    base = max(lrs)
    for group, lr in zip(groups, lrs):
        for p in group["params"]:
            scale = scales.get(name_of[id(p)], 1.0)
            assert lr == pytest.approx(base * scale)  # the schedule decays every group from its own peak
            if group["weight_decay"]:
                assert group["weight_decay"] == pytest.approx(0.1 / scale)
    assert {round(lr / base, 6) for lr in lrs} == {1.0, 0.5}

    plain = _llama()  # not a clone: the Trainer's own two groups, untouched
    trainer = type("GrownTrainer", (GrownLRMixin, Trainer), {})(model=plain, args=args, train_dataset=data)
    trainer.create_optimizer()
    assert len(trainer.optimizer.param_groups) == 2
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {1e-3}


def test_scaling_an_optimizer_that_has_stepped_is_refused():
    big = _exact_clone(_llama())
    opt = torch.optim.AdamW(big.parameters(), lr=1e-3)
    ids = torch.randint(0, 256, (1, 8))
    big(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    with pytest.raises(ValueError, match="fresh optimizer"):
        scale_param_groups(opt, big)


@pytest.mark.parametrize("on", [False, True])
def test_salt_trainer_scales_a_clone_only_when_asked(tmp_path, on):
    from hf_salt.salt import SALTConfig, SALTTrainer

    big = _exact_clone(_llama())
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0)).tolist()
    args = SALTConfig(
        output_dir=str(tmp_path), max_steps=1, learning_rate=1e-3, report_to="none", use_cpu=True,
        save_strategy="no", hypercloning_lr_scale=on,
    )  # fmt: skip
    rows = [{"input_ids": r, "labels": r} for r in ids]
    trainer = SALTTrainer(model=big, teacher_model=_llama(), args=args, train_dataset=rows)
    trainer.create_optimizer()
    lrs = {g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == (
        {1e-3, 5e-4} if on else {1e-3}
    )  # off by default: SALTConfig().hypercloning_lr_scale is False
    assert SALTConfig(output_dir=str(tmp_path), report_to="none").hypercloning_lr_scale is False


def _ramped(model, *, ramp: int, total: int = 12, warmup: int = 2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scale_param_groups(opt, model)
    sched = get_scheduler("cosine", opt, num_warmup_steps=warmup, num_training_steps=total)
    return opt, ramp_lr_scales(sched, ramp)


def test_a_ramp_raises_each_scale_to_one_and_keeps_lr_times_decay():
    big = _exact_clone(_llama())
    opt, sched = _ramped(big, ramp=6)
    ref_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    ref = get_scheduler("cosine", ref_opt, num_warmup_steps=2, num_training_steps=12)  # the unscaled schedule
    for step in range(12):
        full = ref.get_last_lr()[0]
        for group in opt.param_groups:
            scale = group["hypercloning_lr_scale"]
            factor = scale + (1 - scale) * min(1.0, step / 6)  # linear from the recorded scale to 1 at step 6
            assert group["lr"] == pytest.approx(full * factor, abs=1e-12), (step, scale)
            if group["hypercloning_weight_decay"]:
                assert group["lr"] * group["weight_decay"] == pytest.approx(full * 0.1, abs=1e-12)
        opt.step()
        sched.step()
        ref_opt.step()
        ref.step()
    assert {g["hypercloning_lr_scale"] for g in opt.param_groups} == {1.0, 0.5}


def test_a_ramped_first_step_is_still_the_clone_of_the_source_step():
    src = _llama()
    big = _exact_clone(src)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    src_opt = torch.optim.AdamW(src.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-12)
    src_sched = get_scheduler("constant", src_opt)
    opt = torch.optim.AdamW(big.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-12)
    scale_param_groups(opt, big)
    sched = ramp_lr_scales(get_scheduler("constant", opt), 100)
    for model, o, s in ((src, src_opt, src_sched), (big, opt, sched)):
        model(input_ids=ids, labels=ids).loss.backward()
        o.step()
        s.step()
    probe = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (big(input_ids=probe).logits - src(input_ids=probe).logits).abs().max().item() < 1e-4


def test_a_ramp_survives_saving_and_loading_the_optimizer_and_scheduler():
    big = _exact_clone(_llama())
    opt, sched = _ramped(big, ramp=6)
    for _ in range(3):
        opt.step()
        sched.step()
    state = copy.deepcopy((opt.state_dict(), sched.state_dict()))
    opt2, sched2 = _ramped(big, ramp=6)
    opt2.load_state_dict(state[0])  # replaces the param-group dicts the ramp writes weight decay into
    sched2.load_state_dict(state[1])
    for _ in range(3):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        for a, b in zip(opt.param_groups, opt2.param_groups):
            assert (a["lr"], a["weight_decay"]) == pytest.approx((b["lr"], b["weight_decay"]))


def test_salt_trainer_ramps_the_scales_over_the_steps_it_is_given(tmp_path):
    from hf_salt.salt import SALTConfig, SALTTrainer

    big = _exact_clone(_llama())
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0)).tolist()
    args = SALTConfig(
        output_dir=str(tmp_path), max_steps=6, learning_rate=1e-3, lr_scheduler_type="constant", report_to="none",
        use_cpu=True, save_strategy="no", per_device_train_batch_size=4, disable_tqdm=True,
        hypercloning_lr_scale=True, hypercloning_lr_scale_steps=4,
    )  # fmt: skip
    seen: list[set[float]] = []

    class Rates(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            seen.append({round(g["lr"], 9) for g in optimizer.param_groups})

    rows = [{"input_ids": r, "labels": r} for r in ids]
    SALTTrainer(model=big, teacher_model=_llama(), args=args, train_dataset=rows, callbacks=[Rates()]).train()
    want = [{1e-3, round(1e-3 * (0.5 + 0.5 * min(1.0, step / 4)), 9)} for step in range(6)]
    assert seen == want  # 0.5 -> 1 over 4 steps, then one rate for every tensor
    with pytest.raises(ValueError, match="set hypercloning_lr_scale=True"):
        SALTConfig(output_dir=str(tmp_path), report_to="none", hypercloning_lr_scale_steps=4)
