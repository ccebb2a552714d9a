"""`SALTTrainer`: a drop-in `transformers.Trainer` that distils from a small teacher during the first n_KD steps.

Design (see docs/salt.md):
- The loss comes from both models' final hidden states through their output layers in chunks
  (:func:`hf_salt.salt.losses.fused_kd_loss`), so no ``[batch, seq, vocab]`` logits exist in training.
- It is a sum over tokens divided by ``num_items_in_batch`` (all micro-batches of the optimizer step, all ranks),
  hence ``loss_is_scaled_for_ga = True`` and GA/DDP give the same gradients as one big batch.
- omega comes from :class:`hf_salt.salt.schedules.KDScheduleCallback`; when it is 0 the teacher is not run at all.
- Logged components are accumulated as device tensors and merged (across ranks too) only in :meth:`log`.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import datasets
import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer
from transformers.utils import logging

from hf_salt.checks import check_causal_lm, check_model_tokenizer, check_positions
from hf_salt.data.sft import prepare_trainer_data
from hf_salt.hypercloning.optim import GrownLRMixin
from hf_salt.salt.config import SALTConfig
from hf_salt.salt.losses import (
    KDLossOutput,
    fused_kd_loss,
    kd_loss_from_logits,
    logit_transform,
    transform_logits,
)
from hf_salt.salt.output_path import (
    OutputPath,
    aux_loss_coef,
    probe_ids,
    probe_output_path,
    probing,
)
from hf_salt.salt.schedules import KDScheduleCallback, KDState, get_schedule
from hf_salt.trainer_base import TrainerBase, paper
from hf_salt.zoo import load_model, parse_dtype

if TYPE_CHECKING:
    from hf_salt.salt_ds import SALTDSPlan, SALTDSSource

logger = logging.get_logger(__name__)

# Transformers >= 5.19 reads the class attribute `loss_is_scaled_for_ga`; older versions infer "scaled" from
# `model_accepts_loss_kwargs and num_items_in_batch is not None`, which we also make true (see __init__).
_HAS_GA_FLAG = hasattr(Trainer, "loss_is_scaled_for_ga")


def _causal_lm(model: nn.Module) -> PreTrainedModel:
    """The `*ForCausalLM` module under DDP/DeepSpeed/PEFT wrappers."""
    return model.get_base_model() if is_peft_model(model) else model


def _decoder_and_head(lm: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """The base model (returns the hidden states the head reads) and the output layer, found generically."""
    decoder = lm.base_model
    head = lm.get_output_embeddings()
    if decoder is lm or head is None:
        raise ValueError(
            f"{type(lm).__name__} has no separate base model / output layer (base_model_prefix="
            f"{getattr(lm, 'base_model_prefix', None)!r}); SALTTrainer needs a *ForCausalLM model."
        )
    return decoder, head


def _head_rows(lm: nn.Module) -> int:
    """Rows of the output layer (a ZeRO-3 partitioned weight has shape (0,); its full shape is ds_shape)."""
    w = lm.get_output_embeddings().weight
    return int(getattr(w, "ds_shape", w.shape)[0])


def _gathered(params: list[torch.Tensor | None]):
    """Under DeepSpeed ZeRO-3 the output layer is partitioned outside its module's forward: gather it."""
    partitioned = any(p is not None and hasattr(p, "ds_id") for p in params)
    if not partitioned:
        return nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    # only what is still partitioned: a weight tied to the (active) embedding must not be gathered and freed twice
    ds_params = [
        p
        for p in params
        if p is not None and hasattr(p, "ds_id") and p.ds_status == ZeroParamStatus.NOT_AVAILABLE
    ]
    if not ds_params:
        return nullcontext()

    return deepspeed.zero.GatheredParameters(ds_params, modifier_rank=None)


def _redirect_forward(wrapper: nn.Module, inner: nn.Module, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``fn(**kwargs)`` as if it were ``inner.forward``, called through ``wrapper`` (DDP / FSDP / DeepSpeed),
    so the wrapper's forward hooks (gradient sync, parameter all-gathers) fire. Same idea as TRL's
    ``_ForwardRedirection``."""
    had_own = "forward" in inner.__dict__
    original = inner.__dict__.get("forward")

    def restore() -> None:
        if had_own:
            inner.forward = original
        else:
            inner.__dict__.pop("forward", None)

    def patched(*args: Any, **kw: Any) -> Any:
        restore()  # nested calls of inner.forward behave normally
        return fn(*args, **kw)

    inner.forward = patched
    try:
        return wrapper(**kwargs)
    finally:
        restore()


class SALTTrainer(GrownLRMixin, TrainerBase, Trainer):
    """Trainer for SALT: KD from a small teacher for the first n_KD optimizer steps, then plain training.

    A HyperCloning clone as the student trains at its recorded learning-rate scales
    (``args.hypercloning_lr_scale``, :class:`hf_salt.hypercloning.GrownLRMixin`).

    Args:
        model: the student (`*ForCausalLM`) or a local path.
        args: a :class:`SALTConfig`.
        teacher_model: the teacher (model or local path); defaults to ``args.teacher_model_name_or_path``.
        peft_config: optional PEFT config, applied with :func:`hf_salt.peft_utils.apply_peft`.
        kd_schedule: optional callable ``step -> omega`` replacing ``args.kd_schedule``.
        salt_ds_pool: SALT_DS: the KD-stage pool (``hf_salt.salt_ds.select``); the first n_KD optimizer steps read
            it, later steps the rows plain training reads there (docs/salt_ds.md).
        **kwargs: everything `transformers.Trainer` takes.
    """

    loss_is_scaled_for_ga = True
    _name = "SALT"
    _method = "salt"
    _tag_names = ["hf-salt", "salt"]
    _paper = paper("salt")
    _metric_names = ("loss_ce", "loss_kd", "teacher_ce", "kd_weight", "aux_loss")

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        args: SALTConfig | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        peft_config: Any | None = None,
        kd_schedule: Callable[[int], float] | None = None,
        salt_ds_pool: datasets.Dataset | None = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = SALTConfig(output_dir="tmp_trainer")
        if not isinstance(args, SALTConfig):
            raise TypeError(f"SALTTrainer needs args=SALTConfig(...), got {type(args).__name__}.")
        if isinstance(model, str):
            model = load_model(model, flag="the student", local_files_only=False, causal=True)
        if model is None:
            raise ValueError("SALTTrainer needs a student model (a *ForCausalLM model or a local path).")
        check_causal_lm(model, "the student")
        if peft_config is not None:
            from hf_salt.peft_utils import apply_peft

            model = apply_peft(model, peft_config, args=args, reads_output_layer=True)
        teacher = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher is None:
            raise ValueError(
                "SALTTrainer needs a teacher: pass teacher_model=... or set teacher_model_name_or_path."
            )
        check_model_tokenizer(kwargs.get("processing_class"), teacher, "the teacher")  # before loading it
        if kd_schedule is None and (args.kd_weight == 0 or args.kd_steps == 0):
            warnings.warn(
                f"kd_weight={args.kd_weight}, kd_steps={args.kd_steps}: KD is off, so the teacher is loaded and "
                "never run; train with a plain Trainer (or hf-salt pretrain, which then skips the teacher).",
                stacklevel=2,
            )
        teacher = self._load_teacher(teacher, args)
        check_causal_lm(teacher, "the teacher")
        student_params = {id(p) for p in model.parameters()}
        if teacher is model or any(id(p) in student_params for p in teacher.parameters()):
            raise ValueError(
                "The teacher shares weights with the student (the same model passed twice?): KD would pull the "
                "student towards itself. Pass a separate teacher model, e.g. a copy trained before (or a smaller "
                "model); to train without KD use a plain Trainer."
            )

        self._kd_schedule_fn = kd_schedule
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(
            KDScheduleCallback(
                kd_weight=args.kd_weight,
                kd_steps=args.kd_steps,
                schedule=None if kd_schedule is not None else args.kd_schedule,
                decay_start=args.kd_decay_start,
                schedule_fn=kd_schedule,
                auto_margin=args.kd_auto_margin,
                auto_smoothing=args.kd_auto_smoothing,
                auto_decay_steps=args.kd_auto_decay_steps,
            )
        )
        kwargs = prepare_trainer_data(args, kwargs)  # TRL-format raw rows -> tokenized as SFTTrainer does
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)

        # Our compute_loss normalises by num_items_in_batch itself; the Trainer only counts it when it believes
        # the model takes loss kwargs, so make it believe that, and count over labels[..., 1:] like our shift.
        self._student_accepts_loss_kwargs = self.model_accepts_loss_kwargs
        self.model_accepts_loss_kwargs = True
        if hasattr(self, "_loss_shifts_labels"):
            self._loss_shifts_labels = True

        self._omega_last_step = -1
        self._bad_step: torch.Tensor | None = None
        self._teacher_placement = "device"
        self._output_paths: dict[str, OutputPath | None] | None = None  # decided at the first loss
        self._ids_checked = False
        self.salt_ds_pool = salt_ds_pool
        self._salt_ds_plan: SALTDSPlan | None = None
        if salt_ds_pool is not None:
            self._check_salt_ds()
        self.teacher_model = self._prepare_teacher(teacher)
        self._vocab_limit = self._check_vocab()
        self._warn_if_teacher_larger()
        self._init_base()

    # ------------------------------------------------------------------------------------------------ teacher
    @staticmethod
    def _load_teacher(teacher: Any, args: SALTConfig) -> nn.Module:
        init_kwargs = dict(args.teacher_model_init_kwargs or {})
        for key in ("dtype", "torch_dtype"):
            if key in init_kwargs:
                init_kwargs[key] = parse_dtype(init_kwargs[key], f"teacher_model_init_kwargs[{key!r}]")
        if isinstance(teacher, str):
            from transformers.integrations import deepspeed as hf_ds

            ds_ref = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
            replicate = args.teacher_sharding == "replicate" and ds_ref is not None
            if replicate:  # load a full copy: keep from_pretrained from partitioning it with zero.Init
                hf_ds.unset_hf_deepspeed_config()
            try:
                teacher = load_model(
                    teacher, flag="the teacher", local_files_only=False, causal=True, **init_kwargs
                )
            finally:
                if replicate:
                    hf_ds._hf_deepspeed_config_weak_ref = ds_ref
        else:
            dtype = init_kwargs.get("dtype", init_kwargs.get("torch_dtype"))
            if isinstance(dtype, torch.dtype):
                teacher = teacher.to(dtype=dtype)
        return teacher

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """eval mode, no grad, on the student's device; never wrapped by DDP, never in the optimizer."""
        teacher.eval()
        teacher.requires_grad_(False)
        if getattr(teacher.config, "use_cache", None):
            teacher.config.use_cache = False
        if self.is_deepspeed_enabled and self.args.teacher_sharding == "shard":
            import copy

            import deepspeed

            ds_config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
            for key in ("optimizer", "scheduler"):
                ds_config.pop(key, None)
            if ds_config.get("zero_optimization", {}).get("stage") != 3:
                ds_config.setdefault("zero_optimization", {})["stage"] = 0
            engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)
            engine.eval()
            return engine
        return teacher.to(self.args.device)

    @property
    def _teacher_module(self) -> nn.Module | None:
        """The teacher's ``*ForCausalLM`` under a DeepSpeed engine or PEFT adapters (adapters stay active: they
        sit inside its layers; an adapter on its output layer sends it through its own logits, see the probe)."""
        teacher = self.teacher_model
        if teacher is None:  # freed after KD (teacher_offload_after_kd="free")
            return None
        if not isinstance(teacher, PreTrainedModel) and not is_peft_model(teacher):
            teacher = getattr(teacher, "module", teacher)
        return _causal_lm(teacher)

    def _check_vocab(self) -> int | None:
        """Return the row count to use when cutting padded vocabularies, None when sizes agree."""
        n_s = _head_rows(_causal_lm(self.accelerator.unwrap_model(self.model)))
        n_t = _head_rows(self._teacher_module)
        if n_s == n_t:
            return None
        tok = self.processing_class
        tok_len = len(tok) if tok is not None and hasattr(tok, "__len__") else None
        if not self.args.kd_truncate_vocab:
            raise ValueError(
                f"Teacher and student vocabularies differ ({n_t} vs {n_s} output rows). KD needs the same tokenizer. "
                "If both are the same tokenizer padded to different sizes, set kd_truncate_vocab=True and pass "
                "processing_class=tokenizer; otherwise pick a teacher trained with the student's tokenizer."
            )
        if tok_len is None:
            raise ValueError(
                "kd_truncate_vocab=True needs processing_class=tokenizer to know the shared length."
            )
        if tok_len > min(n_s, n_t):
            raise ValueError(
                f"kd_truncate_vocab: the tokenizer has {tok_len} tokens but the output layers have {n_t} (teacher) and "
                f"{n_s} (student) rows, so the vocabularies are not the same tokenizer padded; they cannot be cut."
            )
        logger.warning(f"kd_truncate_vocab: KD and CE use the first {tok_len} rows of both output layers.")
        return tok_len

    def _warn_if_teacher_larger(self) -> None:
        n_t = self._teacher_module.num_parameters()
        n_s = self.accelerator.unwrap_model(self.model).num_parameters()
        if n_t > n_s:
            warnings.warn(
                f"The teacher ({n_t:,} parameters) is larger than the student ({n_s:,}). SALT is about SMALL teachers "
                "helping large students early in training; this works but is ordinary distillation.",
                stacklevel=3,
            )

    @property
    def kd_callback(self) -> KDScheduleCallback:
        """The schedule callback (looked up each time: resuming replaces it with a restored copy, which
        :meth:`_load_callback_state` wires to this trainer's schedule and state)."""
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, KDScheduleCallback):
                return cb
        raise RuntimeError("KDScheduleCallback was removed from the trainer; SALTTrainer needs it.")

    @property
    def kd_state(self) -> KDState:
        return self.kd_callback.kd

    @property
    def kd_steps(self) -> int | None:
        """n_KD: resolved once, when training starts (a fraction of the run's max_steps becomes a step count);
        before that the step count given, or None for a fraction."""
        if self.kd_state.kd_steps is not None:
            return self.kd_state.kd_steps
        return self.args.kd_steps if isinstance(self.args.kd_steps, int) else None

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple:
        """The Trainer works out max_steps here; n_KD is resolved from it, once, for the whole run. With a SALT_DS
        pool this also fixes the order's plan (n_KD, global batch, steps per epoch), read when an epoch begins."""
        values = super().set_initial_training_values(args, dataloader)
        cb = self.kd_callback
        cb.resolve(values[-1])
        if self.salt_ds_pool is not None:  # the pool covers n_KD (the cap under "auto") steps
            from hf_salt.salt_ds import SALTDSPlan

            kd_steps = cb.auto.cap if cb.auto is not None else cb.kd.kd_steps
            self._salt_ds_plan = SALTDSPlan(kd_steps, global_batch_size=values[4], steps_per_epoch=values[1])
        return values

    def _load_callback_state(self) -> None:
        """Resuming rebuilds the schedule callback from its exported args: give the copy this trainer's state
        (n_KD already resolved) and the user's schedule callable, which a checkpoint cannot hold."""
        kd, schedule_fn = self.kd_state, self._kd_schedule_fn
        super()._load_callback_state()
        cb = self.kd_callback
        cb.kd, cb.schedule_fn = kd, schedule_fn

    def _manage_teacher_placement(self, omega: float) -> None:
        """Offload the teacher once omega is 0 for good; bring it back if a custom schedule needs it again."""
        mode = self.args.teacher_offload_after_kd
        if omega > 0:
            if self._teacher_placement == "cpu":
                self.teacher_model.to(self.args.device)
                self._teacher_placement = "device"
            elif self._teacher_placement == "freed":
                raise RuntimeError(
                    "The KD schedule asks for the teacher after it was freed (teacher_offload_after_kd='free'); "
                    "use 'cpu' or 'keep' with a schedule that is not 0 for good after kd_steps."
                )
            return
        if mode == "keep" or self._teacher_placement != "device" or not self.kd_state.kd_done:
            return
        if mode == "cpu" and not isinstance(self.teacher_model, PreTrainedModel):
            return  # a DeepSpeed teacher engine stays where it is
        if mode == "cpu":
            self.teacher_model.to("cpu")
            self._teacher_placement = "cpu"
        else:
            self.teacher_model = None
            self._teacher_placement = "freed"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------------ loss
    def _teacher_hidden(self, model_inputs: dict[str, Any]) -> torch.Tensor:
        teacher = self._teacher_module
        decoder, _ = _decoder_and_head(teacher)
        with torch.no_grad():
            out = decoder(**model_inputs, use_cache=False)
        return out[0]

    def _fused_loss(
        self,
        lm: PreTrainedModel,
        hidden: torch.Tensor,
        teacher_hidden: torch.Tensor | None,
        labels: torch.Tensor,
        shift: bool,
        omega: float,
        num_items_in_batch: Any,
    ) -> KDLossOutput:
        head = lm.get_output_embeddings()
        bias = getattr(head, "bias", None)
        t_w = t_b = None
        t_scale = t_cap = None
        teacher_head = None
        if teacher_hidden is not None:
            teacher = self._teacher_module
            teacher_head = teacher.get_output_embeddings()
            t_scale, t_cap = logit_transform(teacher.config)
        params = [head.weight, bias]
        if teacher_head is not None:
            params += [teacher_head.weight, getattr(teacher_head, "bias", None)]
        with _gathered(params):
            w, b = head.weight, bias
            if teacher_head is not None:
                t_w, t_b = teacher_head.weight, getattr(teacher_head, "bias", None)
            n = self._vocab_limit
            if n is not None:
                w, b = w[:n], (b[:n] if b is not None else None)
                t_w = t_w[:n] if t_w is not None else None
                t_b = t_b[:n] if t_b is not None else None
            s_scale, s_cap = logit_transform(lm.config)
            return fused_kd_loss(
                hidden,
                w,
                teacher_hidden,
                t_w,
                labels,
                kd_weight=omega,
                divergence=self.args.kd_divergence,
                temperature=self.args.kd_temperature,
                beta=self.args.kd_jsd_beta,
                num_items_in_batch=num_items_in_batch,
                student_bias=b,
                teacher_bias=t_b,
                student_logit_scale=s_scale,
                student_softcap=s_cap,
                teacher_logit_scale=t_scale,
                teacher_softcap=t_cap,
                chunk_size=self.args.kd_chunk_size,
                shift_labels=shift,
                backend=self.args.kd_loss_backend,
            )

    def _student_loss(
        self, model: nn.Module, model_inputs: dict[str, Any], **loss_kwargs: Any
    ) -> KDLossOutput:
        inner = self.accelerator.unwrap_model(model)
        lm = _causal_lm(inner)
        decoder, _ = _decoder_and_head(lm)

        def run(**kw: Any) -> KDLossOutput:
            hidden = decoder(**kw, use_cache=False)[0]
            return self._fused_loss(lm, hidden, **loss_kwargs)

        # always through the outermost module's __call__, even when nothing wraps the model: under FSDP2
        # (`fully_shard`) the root's pre-forward hook all-gathers the embeddings, final norm and head
        return KDLossOutput(*_redirect_forward(model, inner, run, **model_inputs))

    def _logits_loss(
        self,
        model: nn.Module,
        model_inputs: dict[str, Any],
        *,
        labels: torch.Tensor,
        shift: bool,
        omega: float,
        num_items_in_batch: Any,
    ) -> tuple[KDLossOutput, torch.Tensor | None]:
        """The SALT objective from the models' own logits (the path for models whose output the fused head
        cannot reproduce; see :mod:`hf_salt.salt.output_path`). Builds full ``[batch, seq, vocab]`` logits.
        Returns the loss and the router aux loss term the student's own forward adds (or None)."""
        student_path = self._output_paths["student"]
        out = model(**model_inputs, use_cache=False)
        s_logits = out.logits
        t_logits = None
        if omega > 0:
            with torch.no_grad():
                t_logits = self.teacher_model(**model_inputs, use_cache=False).logits
        n = self._vocab_limit
        if n is not None:
            s_logits = s_logits[..., :n]
            t_logits = t_logits[..., :n] if t_logits is not None else None
        res = kd_loss_from_logits(
            s_logits,
            t_logits,
            labels.to(s_logits.device),
            kd_weight=omega,
            divergence=self.args.kd_divergence,
            temperature=self.args.kd_temperature,
            beta=self.args.kd_jsd_beta,
            num_items_in_batch=num_items_in_batch,
            shift_labels=shift,
        )
        aux = None
        if student_path.aux_loss_coef is not None and getattr(out, "aux_loss", None) is not None:
            aux = student_path.aux_loss_coef * out.aux_loss.to(res.loss.device)
        return res, aux

    # ------------------------------------------------------------------------------------------------ probe
    @property
    def output_paths(self) -> dict[str, OutputPath | None]:
        """How the student's and the teacher's losses are computed (fused head or own logits), decided by the
        probe at the first loss computation; empty before that."""
        return dict(self._output_paths or {})

    def _probe_output_paths(self, model: nn.Module) -> dict[str, OutputPath | None]:
        """Probe both models once (see :mod:`hf_salt.salt.output_path`); log which path each takes."""
        inner = self.accelerator.unwrap_model(model)
        lm = _causal_lm(inner)
        rows = [_head_rows(lm)]
        teacher = self._teacher_module
        if teacher is not None:
            rows.append(_head_rows(teacher))
        vocab = min([*rows, int(getattr(lm.config, "vocab_size", None) or rows[0])])
        ids = probe_ids(vocab, self.args.device)

        def fused_of(causal: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
            """Exactly what the fused loss computes: the head's weight and bias, not its module's forward."""
            head = causal.get_output_embeddings()
            params = [head.weight, getattr(head, "bias", None)]
            with _gathered(params):
                logits = F.linear(hidden, head.weight, getattr(head, "bias", None))
            scale, cap = logit_transform(causal.config)
            return transform_logits(logits.float(), scale, cap)

        def student_fused(x: torch.Tensor) -> torch.Tensor:
            decoder, _ = _decoder_and_head(lm)

            def run(**kw: Any) -> torch.Tensor:
                return fused_of(lm, decoder(**kw, use_cache=False)[0])

            return _redirect_forward(model, inner, run, input_ids=x)

        paths: dict[str, OutputPath | None] = {"student": None, "teacher": None}
        with probing(inner):
            paths["student"] = probe_output_path(
                lm.config.model_type,
                lambda x, labels: model(input_ids=x, labels=labels, use_cache=False),
                student_fused,
                ids,
                aux_coef=aux_loss_coef(lm),
                what="the student",
            )
        if teacher is not None:
            t_ids = ids.to(next(teacher.parameters()).device)
            t_decoder, _ = _decoder_and_head(teacher)
            with probing(teacher):
                paths["teacher"] = probe_output_path(
                    teacher.config.model_type,
                    lambda x, labels: self.teacher_model(input_ids=x, labels=labels, use_cache=False),
                    lambda x: fused_of(teacher, t_decoder(input_ids=x, use_cache=False)[0]),
                    t_ids,
                    aux_coef=aux_loss_coef(teacher),
                    what="the teacher",
                )
        for what, path in paths.items():
            if path is not None and not path.fused:
                logger.warning(
                    f"SALT: {what} is trained/read through {path.describe()}; this path builds full "
                    "[batch, seq, vocab] logits (correct, memory-heavier than the fused head)."
                )
        return paths

    def _use_fused(self, omega: float) -> bool:
        paths = self._output_paths
        if not paths["student"].fused:
            return False
        teacher = paths.get("teacher")
        return omega <= 0 or teacher is None or teacher.head_exact

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``sum_t [(1 - w) CE + w tau^2 D] / num_items_in_batch`` (times the number of processes, as the base
        Trainer does, to cancel DDP's gradient averaging). Evaluation reports the plain CE (w = 0)."""
        if "labels" not in inputs and "shift_labels" not in inputs:
            raise ValueError(
                "SALTTrainer needs `labels` in each batch (e.g. DataCollatorForLanguageModeling(mlm=False))."
            )
        self._check_length(inputs)
        if not self._ids_checked:
            self._check_token_ids(inputs)
        training = model.training
        if (
            not training
            and return_outputs
            and self.compute_metrics is not None
            and not self.args.prediction_loss_only
        ):
            # metrics need logits: the ordinary path (full logits), as a plain Trainer would do
            saved = self.model_accepts_loss_kwargs
            self.model_accepts_loss_kwargs = self._student_accepts_loss_kwargs
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self.model_accepts_loss_kwargs = saved
        shift = "shift_labels" not in inputs
        labels = inputs["labels"] if shift else inputs["shift_labels"]
        model_inputs = {
            k: v for k, v in inputs.items() if k not in ("labels", "shift_labels", "num_items_in_batch")
        }

        omega = self.kd_state.kd_weight if training else 0.0
        if training:
            self._manage_teacher_placement(omega)
        if self._output_paths is None:
            self._output_paths = self._probe_output_paths(model)
        aux = None
        if self._use_fused(omega):
            teacher_hidden = self._teacher_hidden(model_inputs) if omega > 0 else None
            out = self._student_loss(
                model,
                model_inputs,
                teacher_hidden=teacher_hidden,
                labels=labels,
                shift=shift,
                omega=omega,
                num_items_in_batch=num_items_in_batch,
            )
        else:
            out, aux = self._logits_loss(
                model,
                model_inputs,
                labels=labels,
                shift=shift,
                omega=omega,
                num_items_in_batch=num_items_in_batch,
            )
        loss = out.loss if aux is None else out.loss + aux
        if num_items_in_batch is None:
            if (
                training and _HAS_GA_FLAG
            ):  # a local mean: scale for GA ourselves (we declared the loss scaled)
                loss = loss / self.current_gradient_accumulation_steps
        elif self.args.average_tokens_across_devices:
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            loss = loss * (self.accelerator.num_processes // tp if self.args.n_gpu <= 1 else self.args.n_gpu)
        if training:
            self._record(out, omega, aux)
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def _check_token_ids(self, inputs: dict[str, Any]) -> None:
        """Token ids beyond either model's vocabulary fail deep inside an embedding (or, on CUDA, as a device-side
        assert): check the first batch once (one host sync per run)."""
        ids = inputs.get("input_ids")
        if ids is None or ids.numel() == 0:
            return
        rows = {"the student": _head_rows(_causal_lm(self.accelerator.unwrap_model(self.model)))}
        if self._teacher_module is not None:
            rows["the teacher"] = _head_rows(self._teacher_module)
        largest, smallest = int(ids.max()), int(ids.min())
        for what, n in rows.items():
            if largest >= n or smallest < 0:
                raise ValueError(
                    f"The batch holds token id {largest if largest >= n else smallest}, outside {what}'s "
                    f"vocabulary of {n} ids: the data was tokenized with another tokenizer (or its vocabulary "
                    "grew). Tokenize with the models' tokenizer, or resize the models' embeddings first."
                )
        self._ids_checked = True

    def _check_length(self, inputs: dict[str, Any]) -> None:
        """Refuse sequences longer than either model's positions (a shape check: no device sync).

        A padding-free batch (TRL's collator with `padding_free`, on by itself with bfd packing) is one
        flattened row of several sequences whose `position_ids` restart at each one, so the row may be far
        longer than the positions while every sequence fits: it is checked per sequence. The longest is the
        collator's `max_length_q` (a Python int, no sync); only a flattened row without it that is longer
        than a limit reads `position_ids.max()` (one sync, on such batches only).
        """
        from hf_salt.checks import position_limit

        ids = inputs.get("input_ids")
        if ids is None:
            return
        student = _causal_lm(self.accelerator.unwrap_model(self.model))
        pairs = (("the student", student), ("the teacher", self._teacher_module))
        models = [(what, lm) for what, lm in pairs if lm is not None]
        length = ids.shape[-1]
        limits = [limit for _, lm in models if (limit := position_limit(lm.config))]
        position_ids = inputs.get("position_ids")
        if limits and length > min(limits) and ids.shape[0] == 1 and position_ids is not None:
            longest = inputs.get("max_length_q")
            if isinstance(longest, int):
                length = longest
            else:
                length = int(position_ids.max()) + 1
        for what, lm in models:
            check_positions(length, lm.config, f"SALTTrainer ({what})", "Pack the data into shorter blocks.")

    # ------------------------------------------------------------------------------------------------ logging
    def _record(self, out: KDLossOutput, omega: float, aux: torch.Tensor | None = None) -> None:
        """Accumulate this micro-batch's sums on the device (no host sync)."""
        n = out.num_tokens
        self._metrics.add("loss_ce", out.ce_sum, n)
        if aux is not None:
            self._metrics.add("aux_loss", aux.detach())
        if out.kd_sum is not None:
            self._metrics.add("loss_kd", out.kd_sum, n)
        if out.teacher_ce_sum is not None:
            self._metrics.add("teacher_ce", out.teacher_ce_sum, n)
        step = self.state.global_step
        if step != self._omega_last_step:  # omega once per optimizer step
            self._metrics.add("kd_weight", omega)
            self._omega_last_step = step
        if out.teacher_ce_sum is not None:
            # A flag tensor instead of a check here: `.item()` would sync the host with the device every
            # micro-step. The price: the error surfaces at the next log/save, up to logging_steps later,
            # but it still names the first bad step.
            bad = ~torch.isfinite(out.teacher_ce_sum)
            if self._bad_step is None:
                self._bad_step = torch.full((), -1, dtype=torch.long, device=out.teacher_ce_sum.device)
            self._bad_step = torch.where(bad & (self._bad_step < 0), step + 1, self._bad_step)

    def _check_teacher_finite(self) -> None:
        if self._bad_step is not None:
            bad = int(self._bad_step)
            if bad >= 0:
                raise FloatingPointError(
                    f"The teacher produced NaN/inf logits (its cross-entropy is not finite) at training step {bad}. "
                    "Check the teacher's dtype (fp16 overflows; use bf16/fp32 via teacher_model_init_kwargs) and "
                    "its weights."
                )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs get loss_ce, loss_kd, teacher_ce (token means) and kd_weight (mean over steps), over the
        logging window and all ranks; a non-finite teacher raises first."""
        self._check_teacher_finite()
        super().log(logs, start_time)

    def _add_to_training_log(self, logs: dict[str, float]) -> None:
        """kd_schedule='auto' judges each logging window from the merged loss_ce / teacher_ce."""
        logs.update(self.kd_callback.observe_window(self.state.global_step, logs))

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self._check_teacher_finite()  # never save a checkpoint trained on a broken teacher
        super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------------------------------------------ data
    def _check_salt_ds(self) -> None:
        """Refuse, at construction, the SALT_DS set-ups the sampler cannot order exactly."""
        from hf_salt.salt_ds import SAMPLING_STRATEGIES

        strategy = self.args.train_sampling_strategy
        if strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"salt_ds_pool: train_sampling_strategy={strategy!r} is not supported; SALT_DS orders the data "
                f"itself and reproduces {SAMPLING_STRATEGIES} only."
            )
        if self.train_dataset is None:
            raise ValueError(
                "salt_ds_pool needs a train_dataset (the full set the run reads after the KD stage)."
            )
        self._salt_ds_source()  # types, emptiness, columns

    def _salt_ds_source(self) -> SALTDSSource:
        """The pool and the train set (with the columns the Trainer would keep) behind one index."""
        from hf_salt.salt_ds import SALTDSSource

        train = self.train_dataset
        if self.args.remove_unused_columns and isinstance(train, datasets.Dataset):
            train = self._remove_unused_columns(train, description="Training")
        return SALTDSSource(train, self.salt_ds_pool)

    def _salt_ds_current_plan(self) -> SALTDSPlan:
        if self._salt_ds_plan is None:
            raise RuntimeError(
                "The SALT_DS order is fixed when training starts (n_KD and the steps per epoch come from "
                "set_initial_training_values); iterate the training loader inside train()."
            )
        return self._salt_ds_plan

    def get_train_dataloader(self) -> DataLoader:
        """SALT_DS: the loader reads a `SALTDSSource` (pool + train set) through a `SALTDSSampler`, which puts the
        pool at the positions of the first n_KD optimizer steps; one epoch is ``len(train_dataset)`` rows."""
        if self.salt_ds_pool is None:
            return super().get_train_dataloader()
        from transformers import default_data_collator

        from hf_salt.salt_ds import SALTDSSampler

        source = self._salt_ds_source()
        first = source.train[0], source.pool[0]
        n_train, n_pool = (len(row.get("input_ids", ())) for row in first)
        if self.data_collator is default_data_collator and n_train != n_pool:
            raise ValueError(
                f"The pool's blocks have {n_pool} tokens and the train set's {n_train}: pack both with the same "
                "block_size, or pass a padding data_collator."
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        shuffle = self.args.train_sampling_strategy != "sequential"
        sampler = SALTDSSampler(source, self._salt_ds_current_plan, seed=seed, shuffle=shuffle)
        # `_get_dataloader` is what `Trainer.get_train_dataloader` calls: the same collator handling, worker
        # seeding and accelerate preparation as the plain loader, on our dataset and sampler.
        return self._get_dataloader(
            dataset=source,
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=lambda _dataset: sampler,
            is_training=True,
        )

    # ------------------------------------------------------------------------------------------------ hub
    def method_info(self) -> dict[str, Any]:
        """The SALT settings for the card (teacher, n_KD, schedule, omega, tau, divergence), plus SALT_DS's
        selection when the KD stage read a teacher-selected pool."""
        args = self.args
        teacher = args.teacher_model_name_or_path
        if teacher is None and self.teacher_model is not None:
            teacher = self._teacher_module
        info = {
            "teacher": teacher,
            "kd_steps": self.kd_steps,
            "kd_schedule": "custom" if self._kd_schedule_fn is not None else args.kd_schedule,
            "kd_weight": args.kd_weight,
            "kd_temperature": args.kd_temperature,
            "divergence": args.kd_divergence
            + (f" (beta={args.kd_jsd_beta})" if args.kd_divergence == "jsd" else ""),
            "teacher_policy": f"{args.teacher_sharding}, after KD: {args.teacher_offload_after_kd}",
        }
        if get_schedule(args.kd_schedule).uses_decay_start and args.kd_decay_start is not None:
            info["kd_decay_start"] = args.kd_decay_start
        if self.kd_callback.auto is not None:
            info["kd_auto_switch"] = self.kd_callback.auto.describe()
        info.update(self._salt_ds_selection() or {})
        return info

    def card_method(self) -> str:
        return "salt+salt_ds" if self._salt_ds_selection() is not None else "salt"

    def _salt_ds_selection(self) -> dict[str, Any] | None:
        return getattr(self.salt_ds_pool, "salt_ds_selection", None)
