"""The experiment engine behind `hf-salt demo` and `hf-salt benchmark`: one teacher, then student arms.

Every arm of a seed trains the same student preset for the same number of steps, with the same optimizer and LR
schedule, on the same packed blocks read in the same order, so validation curves are comparable. Two hooks:

- **data order** (``order``): ``order(n_rows, n_samples, seed) -> row indices``; the trainer reads those rows in
  that order (a ``SequentialSampler``). Default :func:`ordered_indices`, fresh permutations per seed.
- **timing** (``recorder``): a ``TrainerCallback`` factory with ``seconds`` (wall-clock of the optimizer steps,
  evaluations excluded) and ``curve`` ({step, wall, loss} per evaluation). Default :class:`CurveRecorder`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import ExportableState, ProgressCallback

from hf_salt.checkpoints import AtomicCheckpointTrainer
from hf_salt.experiments.arms import ARMS, ArmContext
from hf_salt.experiments.config import ExperimentConfig
from hf_salt.experiments.resume import checkpoint_for, remove_checkpoints
from hf_salt.hypercloning.optim import with_grown_lr
from hf_salt.io import atomic_directory, write_text_atomic


# --------------------------------------------------------------------------------------------------- data order
def ordered_indices(n_rows: int, n_samples: int, seed: int) -> np.ndarray:
    """The data order of a seed: concatenated fresh permutations of ``range(n_rows)``, ``n_samples`` long.

    A pure function of (n_rows, n_samples, seed): every arm of a seed reads exactly these rows in this order.
    """
    if n_rows < 1 or n_samples < 0:
        raise ValueError(f"need n_rows >= 1 and n_samples >= 0, got {n_rows}, {n_samples}.")
    rng = np.random.default_rng(seed)
    parts, have = [], 0
    while have < n_samples:
        parts.append(rng.permutation(n_rows))
        have += n_rows
    return np.concatenate(parts)[:n_samples] if parts else np.zeros(0, dtype=np.int64)


def even_rows(n_rows: int, k: int) -> list[int]:
    """k evenly spaced rows (all if k == 0 or k >= n_rows): a validation subset that spans the split."""
    if k <= 0 or k >= n_rows:
        return list(range(n_rows))
    return sorted({int(i) for i in np.linspace(0, n_rows - 1, k).round()})


# --------------------------------------------------------------------------------------------------- timing
class CurveRecorder(TrainerCallback, ExportableState):
    """Times the optimizer steps (not evaluations) and records (step, wall, loss) at every evaluation.

    Its state goes into every checkpoint, so a resumed run keeps the curve and step time from before the kill.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        self.curve: dict[str, list[float]] = {"step": [], "wall": [], "loss": []}

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._t0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics and "eval_loss" in metrics:
            step = state.global_step
            if self.curve["step"] and self.curve["step"][-1] == step:  # the same point twice
                return
            self.curve["step"].append(step)
            self.curve["wall"].append(self.seconds)
            self.curve["loss"].append(float(metrics["eval_loss"]))

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds": self.seconds, "curve": self.curve}}


# --------------------------------------------------------------------------------------------------- progress
class QuietProgress(ProgressCallback):
    """One progress bar per run with the latest losses as its postfix, instead of a printed dict per log.

    Runs log every ``eval_every / 5`` steps and evaluate every ``eval_every``; printing each of those, plus a bar
    per evaluation, buries the table the user is waiting for.
    """

    # (log key, label): the student's own cross-entropy, never the SALT mix (1-omega)*CE + omega*KD, so
    # train and validation figures compare across arms
    _SHOWN = (("loss", "train_ce"), ("loss_ce", "train_ce"), ("eval_loss", "val_ce"), ("kd_weight", "omega"))

    def __init__(self, desc: str = "") -> None:
        super().__init__()
        self.desc = desc
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # named from the start: no unnamed bar before it
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc=self.desc or None)
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass  # no bar per evaluation: the result shows up in the training bar's postfix

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, label in self._SHOWN:  # loss_ce after loss: a SALT arm shows its CE, not the mix
            if logs and isinstance(logs.get(key), (int, float)):
                self.postfix[label] = f"{logs[key]:.4g}"
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.set_postfix(self.postfix, refresh=False)


def quiet_progress(trainer: Trainer, desc: str = "") -> Trainer:
    """Swap the Trainer's progress bar for :class:`QuietProgress` (a no-op with ``disable_tqdm``: no bar then)."""
    if trainer.args.disable_tqdm:
        return trainer
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress(desc))
    return trainer


# --------------------------------------------------------------------------------------------------- the engine
def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (which saved teacher / run matches a config)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# fields that define the teacher: a saved teacher is reused only if they match
TEACHER_FIELDS = (
    "corpus", "tokenizer", "teacher_preset", "block_size", "max_train_blocks", "teacher_steps", "batch_size",
    "gradient_accumulation_steps", "teacher_learning_rate", "warmup_steps", "weight_decay", "adam_beta2",
    "max_grad_norm", "bf16",
)  # fmt: skip


# fields that only the teacher's training reads: not part of the key of an arm without a teacher
TEACHER_ONLY_FIELDS = (
    "teacher_preset", "teacher_steps", "teacher_learning_rate", "teacher_seed", "teacher_per_seed",
)  # fmt: skip


# fields added later, whose default is what runs did before: in a run's key only when set to something else
KEY_IF_SET = {"hc_lr_scale_steps": 0}


# fields that say how a run is checkpointed and resumed: they never change its result
RESUME_FIELDS = ("save_steps", "resume_from_checkpoint")


class Engine:
    """Data, teachers and arm runs of one config.

    ``load_data()`` packs the corpus; ``teacher(seed, folder)`` trains (or reloads) a teacher; ``run_arm(arm, seed,
    teacher, teacher_record)`` trains one arm and returns its record (curve, timings, KD schedule).
    """

    #: config fields that change how a run executes or where it reports, not what it computes
    execution_fields: tuple[str, ...] = ("arms", "disable_tqdm", "output_dir", "seed")

    def __init__(
        self,
        config: ExperimentConfig,
        *,
        order: Callable[[int, int, int], np.ndarray] = ordered_indices,
        recorder: Callable[[], CurveRecorder] = CurveRecorder,
    ) -> None:
        self.cfg = config
        self.out = Path(config.output_dir)
        self.order_fn = order
        self.recorder = recorder
        self._orders: dict[tuple[int, int], Any] = {}

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        from hf_salt.data import check_block_size, load_corpus, load_tokenizer, pack_dataset
        from hf_salt.data.corpora import describe_split
        from hf_salt.zoo import build_config

        cfg = self.cfg
        for preset in (cfg.teacher_preset, cfg.student_preset):
            check_block_size(cfg.block_size, build_config(preset))
        self.tokenizer = load_tokenizer(cfg.tokenizer)
        corpus = load_corpus(cfg.corpus)
        self.train = pack_dataset(
            corpus["train"], self.tokenizer, cfg.block_size, name=describe_split(cfg.corpus, "train")
        )
        if cfg.max_train_blocks and len(self.train) > cfg.max_train_blocks:
            self.train = self.train.select(range(cfg.max_train_blocks))
        validation = pack_dataset(
            corpus["validation"],
            self.tokenizer,
            cfg.block_size,
            name=describe_split(cfg.corpus, "validation"),
        )
        self.validation = validation.select(even_rows(len(validation), cfg.eval_blocks))

    def order(self, seed: int, steps: int) -> Any:
        """The training set in the seed's order, ``steps`` x global batch rows long."""
        key = (seed, steps)
        if key not in self._orders:
            rows = self.order_fn(len(self.train), steps * self.cfg.global_batch_size, seed)
            self._orders[key] = self.train.select(np.asarray(rows).tolist())
        return self._orders[key]

    # ---------------------------------------------------------------- keys
    def teacher_key(self) -> str:
        return digest({k: getattr(self.cfg, k) for k in TEACHER_FIELDS})

    def run_key(self, arm: str) -> str:
        """Fields that define the run of ``arm``: the shared ones plus the arm's ``depends_on`` (so a sweep of
        omega reuses one baseline)."""
        return digest(self._run_fields(arm))

    def _run_fields(self, arm: str) -> dict[str, Any]:
        from hf_salt.experiments.arms import AUTO_FIELDS, HYPERCLONING_FIELDS, KD_FIELDS

        optional = set(KD_FIELDS) | set(AUTO_FIELDS) | set(HYPERCLONING_FIELDS) | {"salt_ds_pool"}
        if not ARMS[arm].uses_teacher:  # a baseline is the same run whatever teacher the others get
            optional |= set(TEACHER_ONLY_FIELDS)
        skip = (set(self.execution_fields) | set(RESUME_FIELDS) | optional) - set(ARMS[arm].depends_on)
        fields = {k: v for k, v in asdict(self.cfg).items() if k not in skip}
        # fields added after runs were saved: at their default they leave the key (and the saved runs) as they were
        return {k: v for k, v in fields.items() if k not in KEY_IF_SET or v != KEY_IF_SET[k]}

    # ---------------------------------------------------------------- training
    def training_args(
        self, cls: type, out: Path, *, steps: int, lr: float, warmup: int, seed: int, **extra: Any
    ):
        cfg = self.cfg
        return cls(
            output_dir=str(out),
            max_steps=steps,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            per_device_eval_batch_size=cfg.eval_batch_size,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=warmup,
            weight_decay=cfg.weight_decay,
            adam_beta2=cfg.adam_beta2,
            max_grad_norm=cfg.max_grad_norm,
            eval_strategy="steps",
            eval_steps=cfg.eval_every,
            logging_steps=max(1, cfg.eval_every // 5),
            save_strategy="steps" if cfg.save_steps else "no",
            save_steps=cfg.save_steps or 500,
            save_total_limit=1,  # the latest complete checkpoint; saves are atomic (AtomicCheckpointMixin)
            restore_callback_states_from_checkpoint=True,  # the CurveRecorder's curve and step time
            report_to="none",
            seed=seed,
            data_seed=seed,
            bf16=cfg.bf16,
            use_cpu=cfg.use_cpu,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available() and not cfg.use_cpu,
            disable_tqdm=cfg.disable_tqdm,
            **{"train_sampling_strategy": "sequential", **extra},  # the engine fixed the order per seed
        )

    def _train(self, trainer: Trainer, recorder: CurveRecorder, steps: int) -> CurveRecorder:
        """Evaluate at step 0, train (evaluating every eval_every steps), make sure the last step is evaluated.

        Continues from the run's checkpoint when resuming; returns the recorder that holds the whole curve (on
        resume the Trainer replaces it with one restored from the checkpoint).
        """
        resume = checkpoint_for(self.cfg.resume_from_checkpoint, Path(trainer.args.output_dir))
        if resume is None:
            trainer.evaluate()
        trainer.train(resume_from_checkpoint=resume)
        recorder = next(
            (c for c in trainer.callback_handler.callbacks if type(c) is type(recorder)), recorder
        )
        if recorder.curve["step"][-1] != steps:
            trainer.evaluate()
        return recorder

    def teacher(
        self, seed: int, folder: Path | None = None, *, reuse: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        """Train the teacher of ``seed`` and save it in ``folder`` (reloaded from there when its key matches)."""
        from transformers import AutoModelForCausalLM

        from hf_salt.zoo import build_model

        cfg = self.cfg
        folder = folder or self.out / f"teacher-seed{seed}"
        meta = folder / "teacher.json"
        if reuse and meta.exists():
            record = json.loads(meta.read_text())
            if record.get("key") == self.teacher_key():
                print(f"[hf-salt] reusing the teacher in {folder}")
                return AutoModelForCausalLM.from_pretrained(folder).eval(), record
        set_seed(seed)
        model = build_model(cfg.teacher_preset, vocab_size=len(self.tokenizer), seed=seed)
        recorder = self.recorder()
        args = self.training_args(
            TrainingArguments, self.out / "_runs" / f"teacher-seed{seed}", steps=cfg.teacher_steps,
            lr=cfg.teacher_learning_rate, warmup=cfg.warmup_steps, seed=seed,
        )  # fmt: skip
        trainer = AtomicCheckpointTrainer(
            model=model,
            args=args,
            train_dataset=self.order(seed, cfg.teacher_steps),
            eval_dataset=self.validation,
            callbacks=[recorder],
        )
        quiet_progress(trainer, f"teacher ({cfg.teacher_preset})")
        print(
            f"[hf-salt] training the teacher ({cfg.teacher_preset}, seed {seed}, {cfg.teacher_steps} steps)"
        )
        recorder = self._train(trainer, recorder, cfg.teacher_steps)
        meta.unlink(missing_ok=True)  # a kill while the weights are replaced must not leave a reusable record
        trainer.save_model(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        trainer.model.config._name_or_path = str(folder)  # what clones and cards name as their source
        record = {
            "key": self.teacher_key(),
            "preset": cfg.teacher_preset,
            "seed": seed,
            "steps": cfg.teacher_steps,
            "train_time_s": recorder.seconds,
            "curve": recorder.curve,
            "final_loss": recorder.curve["loss"][-1],
            "path": str(folder),
        }
        write_text_atomic(meta, json.dumps(record, indent=1))
        remove_checkpoints(Path(args.output_dir))
        return trainer.model.eval(), record

    def run_arm(
        self,
        arm: str,
        seed: int,
        teacher: Any,
        teacher_record: dict[str, Any],
        *,
        save_to: Path | None = None,
    ) -> dict[str, Any]:
        """Train the student of ``arm`` for ``seed``; returns its record. ``save_to``: save the model, tokenizer and
        model card there."""
        from hf_salt.salt.config import SALTConfig
        from hf_salt.salt.trainer import SALTTrainer

        cfg = self.cfg
        spec = ARMS[arm]
        set_seed(seed)
        train = self.order(seed, cfg.max_steps)
        setup = spec.build(ArmContext(cfg, self.tokenizer, train, self.validation, teacher, seed))
        uses_salt = setup.salt is not None
        trainer_cls = setup.trainer_cls or (SALTTrainer if uses_salt else AtomicCheckpointTrainer)
        kwargs = dict(setup.trainer_kwargs)
        if uses_salt:  # SALTTrainer reads them from its args
            fields_lr = {
                "hypercloning_lr_scale": cfg.hc_lr_scale,
                "hypercloning_lr_scale_steps": cfg.hc_lr_scale_steps,
            }
        elif spec.grown and cfg.hc_lr_scale:
            trainer_cls, fields_lr = with_grown_lr(trainer_cls), {}
            kwargs["lr_scale_steps"] = cfg.hc_lr_scale_steps
        else:
            fields_lr = {}
        lr = cfg.hc_learning_rate if spec.grown and cfg.hc_learning_rate is not None else cfg.learning_rate
        warmup = cfg.hc_warmup_steps if spec.grown and cfg.hc_warmup_steps is not None else cfg.warmup_steps
        fields = {**fields_lr, **(setup.salt or {})}
        if uses_salt:  # the teacher is passed in memory; its folder goes into the model card
            fields.setdefault("teacher_model_name_or_path", teacher_record.get("path"))
            kwargs["teacher_model"] = teacher
        args = self.training_args(
            SALTConfig if uses_salt else TrainingArguments, self.out / "_runs" / f"seed{seed}" / arm,
            steps=cfg.max_steps, lr=lr, warmup=warmup, seed=seed, **fields,
        )  # fmt: skip
        recorder = self.recorder()
        trainer = trainer_cls(
            model=setup.model,
            args=args,
            train_dataset=train,
            eval_dataset=self.validation,
            callbacks=[recorder],
            **kwargs,
        )
        quiet_progress(trainer, arm)
        recorder = self._train(trainer, recorder, cfg.max_steps)
        record = {
            "key": self.run_key(arm),
            "arm": arm,
            "seed": seed,
            "teacher_seed": teacher_record["seed"],
            "uses_teacher": bool(spec.uses_teacher),
            "kd_steps": int(getattr(trainer, "kd_steps", 0) or 0) if uses_salt else 0,
            "learning_rate": lr,
            "warmup_steps": warmup,
            "train_time_s": recorder.seconds,
            "offline_teacher_s": setup.offline_teacher_s,
            "step_kind": setup.step_kind,
            "curve": recorder.curve,
            "kd_weight": _schedule(trainer, cfg.max_steps) if uses_salt else {"step": [], "weight": []},
        }
        auto = trainer.kd_callback.auto if uses_salt else None
        if auto is not None:  # kd_schedule="auto": when and why it switched
            record["kd_auto"] = {**auto.export(), "summary": auto.describe()}
        if save_to is not None:
            with atomic_directory(save_to) as tmp:
                trainer.save_model(str(tmp))
                self.tokenizer.save_pretrained(str(tmp))
                _write_card(trainer, arm, tmp, model_path=save_to)
            record["path"] = str(save_to)
        remove_checkpoints(Path(args.output_dir))
        del trainer, setup
        gc.collect()
        return record


def _schedule(trainer: Any, steps: int) -> dict[str, list[float]]:
    """omega at every optimizer step, from the trainer's own schedule (exact, not a logging-window mean)."""
    callback = trainer.kd_callback
    return {"step": list(range(steps)), "weight": [callback.weight_at(s) for s in range(steps)]}


def _write_card(trainer: Trainer, arm: str, path: Path, model_path: Path | None = None) -> None:
    """Give every hf-salt arm's model folder its model card (method, teacher, schedule, grown-from, metrics)."""
    from hf_salt.salt.trainer import SALTTrainer

    name = f"hf-salt-{arm}"  # the quick start names model_path, where the model ends up
    if isinstance(trainer, SALTTrainer):
        trainer.create_model_card(model_name=name, model_path=str(model_path or path))
    elif getattr(trainer.model.config, "hypercloning", None):
        from hf_salt.model_card import write_model_card

        write_model_card(
            trainer,
            method="hypercloning",
            method_info={},
            model_name=name,
            model_path=str(model_path or path),
        )
    else:
        return
    card = Path(trainer.args.output_dir) / "README.md"
    if card.exists():
        shutil.copy(card, path / "README.md")
