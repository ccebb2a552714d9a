"""SALTTrainer: GA parity, teacher skipping, vocabulary checks, exact resume, logging, NaN teacher, SALT_DS hook."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from hf_salt.salt.config import SALTConfig
from hf_salt.salt.output_path import PROBE_TOKENS
from hf_salt.salt.trainer import SALTTrainer

V, SEQ = 128, 16


def _model(hidden: int, seed: int, vocab: int = V) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def _dataset(n: int = 32, seed: int = 0, ragged: bool = True) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, SEQ), generator=g)
    labels = ids.clone()
    if ragged:  # a different number of valid tokens per row: per-batch means would differ from the token mean
        for i in range(n):
            labels[i, : i % 7] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def _args(tmp_path, **kw) -> SALTConfig:
    base = dict(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        kd_steps=2,
        kd_weight=0.5,  # explicit: the tests below compute expected values with it
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    base.update(kw)
    if "kd_steps" not in kw:
        base["kd_steps"] = min(2, base["max_steps"])
    return SALTConfig(**base)


class _GradCapture(TrainerCallback):
    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append(
            {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        )


@pytest.mark.parametrize("kd_weight", [0.5, 0.0])
def test_gradient_accumulation_parity(tmp_path, kd_weight):
    """GA=4 x batch 2 and GA=1 x batch 8 give the same gradients (token-normalised over the optimizer step)."""
    grads = []
    for bs, ga in [(2, 4), (8, 1)]:
        cap = _GradCapture()
        args = _args(
            tmp_path / f"ga{ga}",
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=1,
            max_grad_norm=0.0,
            kd_weight=kd_weight,
            kd_steps=1,
        )
        trainer = SALTTrainer(
            model=_model(32, 0),
            args=args,
            teacher_model=_model(16, 1),
            train_dataset=_dataset(),
            callbacks=[cap],
        )
        trainer.train()
        grads.append(cap.grads[0])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=0, msg=name)


def test_plain_steps_match_hf_trainer_gradients(tmp_path):
    """With omega = 0 a SALT step has exactly the gradient of a plain HF Trainer step (its causal-LM loss)."""
    data = _dataset()
    cap_salt, cap_hf = _GradCapture(), _GradCapture()
    args = _args(tmp_path / "s", max_steps=1, max_grad_norm=0.0, kd_steps=0, gradient_accumulation_steps=2)
    SALTTrainer(
        model=_model(32, 0), args=args, teacher_model=_model(16, 1), train_dataset=data, callbacks=[cap_salt]
    ).train()
    hf_args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,
        report_to="none",
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
    )
    Trainer(model=_model(32, 0), args=hf_args, train_dataset=data, callbacks=[cap_hf]).train()
    for name, g in cap_hf.grads[0].items():
        torch.testing.assert_close(cap_salt.grads[0][name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_teacher_not_called_when_weight_is_zero(tmp_path):
    teacher = _model(16, 1)
    calls, probes = [], []
    # the output-path probe (once per run, one [1, PROBE_TOKENS] sequence) is counted apart from the steps
    teacher.model.register_forward_hook(
        lambda mod, args, out: (probes if out[0].shape[:2] == (1, PROBE_TOKENS) else calls).append(1)
    )
    args = _args(
        tmp_path, max_steps=5, kd_steps=2, gradient_accumulation_steps=2, per_device_train_batch_size=2
    )
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    trainer.train()
    assert len(calls) == 2 * 2  # n_KD steps x GA micro-batches, none in stage 2
    assert (
        len(probes) == 3
    )  # once per run: the teacher's own forward twice (its predictions, then its loss), its body
    assert trainer.kd_steps == 2
    # after KD the teacher left the device (default teacher_offload_after_kd="cpu"); "free" drops it
    calls.clear()
    args = _args(tmp_path / "k0", max_steps=2, kd_weight=0.0, kd_steps=2, teacher_offload_after_kd="free")
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    trainer.train()
    assert calls == [] and trainer.teacher_model is None


def test_logged_metrics_and_eval_loss(tmp_path):
    data = _dataset()
    args = _args(tmp_path, max_steps=4, kd_steps=2, logging_steps=2, kd_divergence="jsd")
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=_model(16, 1), train_dataset=data)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == 2
    first, second = logs
    for key in ("loss_ce", "loss_kd", "kd_weight", "teacher_ce"):
        assert key in first, first
    assert first["kd_weight"] == pytest.approx(0.5) and second["kd_weight"] == 0.0
    # components are token-weighted over the window, Trainer's `loss` averages per-step means: close, not equal
    assert "loss_kd" not in second and second["loss"] == pytest.approx(second["loss_ce"], rel=1e-3)
    assert first["loss"] == pytest.approx(0.5 * first["loss_ce"] + 0.5 * first["loss_kd"], rel=1e-3)
    # evaluation reports the plain next-token loss, equal to a plain Trainer's eval_loss on the same model
    salt_eval = trainer.evaluate(eval_dataset=data)["eval_loss"]
    hf_args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), report_to="none", use_cpu=True, per_device_eval_batch_size=8
    )
    hf_eval = Trainer(model=trainer.model, args=hf_args).evaluate(eval_dataset=data)["eval_loss"]
    assert salt_eval == pytest.approx(hf_eval, rel=1e-5)


def test_resume_mid_decay_is_exact(tmp_path):
    def run(out, max_steps, resume=None):
        args = _args(
            out,
            max_steps=8,
            kd_steps=6,
            kd_schedule="linear",
            kd_decay_start=2,
            save_strategy="steps",
            save_steps=4,
            logging_steps=2,
        )
        trainer = SALTTrainer(
            model=_model(32, 0), args=args, teacher_model=_model(16, 1), train_dataset=_dataset()
        )
        if max_steps < 8:  # stop after the checkpoint, as if the job died
            trainer.add_callback(_StopAt(max_steps))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full", 8)
    run(tmp_path / "part", 4)
    resumed = run(tmp_path / "part", 8, resume=str(tmp_path / "part" / "checkpoint-4"))
    for (n, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n
    kd_full = [r["kd_weight"] for r in full.state.log_history if "kd_weight" in r]
    kd_resumed = [r["kd_weight"] for r in resumed.state.log_history if "kd_weight" in r]
    assert kd_full == pytest.approx([0.5, (0.5 + 0.5 * 3 / 4) / 2, (0.5 * 2 / 4 + 0.5 * 1 / 4) / 2, 0.0])
    assert kd_resumed == pytest.approx(kd_full)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def test_vocab_mismatch_and_larger_teacher(tmp_path):
    args = _args(tmp_path)
    with pytest.raises(ValueError, match="vocabularies differ"):
        SALTTrainer(
            model=_model(32, 0), args=args, teacher_model=_model(16, 1, vocab=V + 8), train_dataset=_dataset()
        )

    class Tok:  # just a length: the shared tokenizer of two padded vocabularies
        def __len__(self) -> int:
            return V

    args = _args(tmp_path, kd_truncate_vocab=True, max_steps=1)
    trainer = SALTTrainer(
        model=_model(32, 0, vocab=V + 16),
        args=args,
        teacher_model=_model(16, 1, vocab=V + 8),
        train_dataset=_dataset(),
        processing_class=Tok(),
    )
    trainer.train()
    assert trainer._vocab_limit == V
    with pytest.warns(UserWarning, match="larger than the student"):
        SALTTrainer(
            model=_model(16, 0), args=_args(tmp_path), teacher_model=_model(32, 1), train_dataset=_dataset()
        )


def test_nan_teacher_is_a_clear_error(tmp_path):
    """NaN weights are refused when training starts; finite weights whose logits overflow are caught by the
    device-side guard and named by the first bad step."""
    teacher = _model(16, 1)
    with torch.no_grad():
        teacher.lm_head.weight[3, 0] = float("nan")
    args = _args(tmp_path, max_steps=3, kd_steps=3, logging_steps=3)
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    with pytest.raises(ValueError, match="the teacher has NaN or inf weights in lm_head.weight"):
        trainer.train()
    teacher = _model(16, 1)
    with torch.no_grad():
        teacher.lm_head.weight[3] = 3e38  # finite, but its logits are not
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    with pytest.raises(FloatingPointError, match="training step 1"):
        trainer.train()


def test_teacher_moved_and_cast(tmp_path):
    teacher = _model(16, 1).to(torch.float64)
    args = _args(tmp_path, max_steps=1, teacher_model_init_kwargs={"dtype": "float32"})
    trainer = SALTTrainer(model=_model(32, 0), args=args, teacher_model=teacher, train_dataset=_dataset())
    assert trainer.teacher_model.dtype == torch.float32 and not trainer.teacher_model.training
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    trainer.train()
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in trainer.teacher_model.parameters()}


def test_salt_ds_pool_refusals_name_the_fix(tmp_path):
    """SALT_DS set-ups the sampler cannot order exactly are refused at construction, by name."""
    make = partial(SALTTrainer, model=_model(32, 0), teacher_model=_model(16, 1), train_dataset=_dataset())
    args = _args(tmp_path, max_steps=2, kd_steps=1)
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        make(args=_args(tmp_path, train_sampling_strategy="group_by_length"), salt_ds_pool=_dataset(8))
    with pytest.raises(ValueError, match=r"lacks the train set's column\(s\) \['labels'\]"):
        make(args=args, salt_ds_pool=_dataset(8).remove_columns("labels"))
    with pytest.raises(ValueError, match="salt_ds_pool is empty"):
        make(args=args, salt_ds_pool=_dataset(8).select([]))
    with pytest.raises(TypeError, match="salt_ds_pool must be a datasets.Dataset"):
        make(args=args, salt_ds_pool=[{"input_ids": [1, 2]}])
    with pytest.raises(TypeError, match="needs train_dataset to be a datasets.Dataset"):
        make(args=args, train_dataset=list(_dataset()), salt_ds_pool=_dataset(8))
    short = _dataset(8).map(lambda r: {k: r[k][:4] for k in ("input_ids", "labels")})
    trainer = make(args=args, salt_ds_pool=short)
    with pytest.raises(ValueError, match="same block_size"):
        trainer.get_train_dataloader()
    with pytest.raises(RuntimeError, match="fixed when training starts"):
        iter(make(args=args, salt_ds_pool=_dataset(8)).get_train_dataloader()).__next__()


def test_config_validation_messages():
    with pytest.raises(ValueError, match="kd_weight"):
        SALTConfig(output_dir="x", kd_weight=1.5)
    with pytest.raises(ValueError, match="kd_decay_start"):
        SALTConfig(output_dir="x", kd_steps=10, kd_decay_start=20, kd_schedule="linear")
    with pytest.raises(ValueError, match="JSON"):
        SALTConfig(output_dir="x", teacher_model_init_kwargs="{bad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = SALTConfig(output_dir="x", teacher_model_init_kwargs='{"dtype": "bfloat16"}', kd_steps=0.25)
    assert cfg.teacher_model_init_kwargs == {"dtype": "bfloat16"} and cfg.kd_steps == 0.25


def test_kd_steps_resolved_once_and_reading_the_callback_changes_nothing(tmp_path, monkeypatch):
    """n_KD (a fraction here) is worked out once when training starts, also with a SALT_DS pool; reading `kd_callback` never rewires the callback; a resumed run
    keeps the user's schedule callable and the resolved n_KD."""
    import hf_salt.salt.schedules as schedules

    calls = []
    real = schedules.resolve_kd_steps
    monkeypatch.setattr(schedules, "resolve_kd_steps", lambda *a: calls.append(a) or real(*a))

    def omega(step: int) -> float:
        return 0.5 if step < 2 else 0.0

    def make(out, stop=None):
        args = _args(out, max_steps=4, kd_steps=0.5, save_strategy="steps", save_steps=2)
        trainer = SALTTrainer(
            model=_model(32, 0),
            args=args,
            teacher_model=_model(16, 1),
            train_dataset=_dataset(),
            salt_ds_pool=_dataset(8, seed=1),
            kd_schedule=omega,
        )
        if stop is not None:
            trainer.add_callback(_StopAt(stop))
        return trainer

    trainer = make(tmp_path / "full")
    assert trainer.kd_steps is None  # a fraction: unknown until training starts
    cb = trainer.kd_callback
    cb.schedule_fn = None
    assert trainer.kd_callback.schedule_fn is None  # a read does not re-attach anything
    cb.schedule_fn = omega
    trainer.train()
    assert trainer.kd_steps == 2 and calls == [(0.5, 4)]
    kd_full = [r["kd_weight"] for r in trainer.state.log_history if "kd_weight" in r]

    make(tmp_path / "part", stop=2).train()
    calls.clear()
    resumed = make(tmp_path / "part")
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))
    assert resumed.kd_callback.schedule_fn is omega and resumed.kd_steps == 2 and calls == [(0.5, 4)]
    kd_resumed = [r["kd_weight"] for r in resumed.state.log_history if "kd_weight" in r]
    assert kd_resumed == pytest.approx(kd_full) and kd_full == pytest.approx([0.5, 0.5, 0.0, 0.0])
