"""Seconds per optimizer step of each kind of step a benchmark arm takes, from one interleaved measurement.

The arms of a benchmark run hours apart, sometimes beside other work, so their own timed steps disagree with
each other (the same student's plain steps have differed by 20 percent between arms). Wall-clock fractions are
therefore priced from one measurement in one process: a plain student step, a SALT KD step (student step +
teacher forward + KD loss) and a teacher step, each timed through the real trainers on random blocks of the
benchmark's shape, in interleaved rounds; the median over rounds is the cost. Arms then cost
(KD steps x ``kd``) + (plain steps x their model's cost).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainerCallback, default_data_collator

KINDS = ("student", "kd", "teacher")


class StepTimer(TrainerCallback):
    """Wall and CPU seconds of the optimizer steps after the first ``warmup`` ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.cpu_start, self.steps = warmup, 0.0, 0.0, 0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.warmup:
            self.steps += 1

    def seconds(self) -> tuple[float, float]:
        return time.perf_counter() - self.start, time.process_time() - self.cpu_start


def random_blocks(vocab_size: int, block_size: int, n: int) -> Dataset:
    ids = torch.randint(0, vocab_size, (n, block_size), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def time_steps(
    kind: str,
    *,
    teacher_preset: str,
    student_preset: str,
    vocab_size: int,
    block_size: int,
    batch_size: int,
    steps: int,
    warmup: int,
) -> tuple[float, float]:
    """(wall, CPU) seconds per optimizer step of one run of ``kind`` (student, kd, teacher): a KD step through
    SALTTrainer, a plain step through transformers.Trainer (as the baseline takes it; SALTTrainer needs a teacher)."""
    from transformers import Trainer, TrainingArguments

    from hf_salt.salt import SALTConfig, SALTTrainer
    from hf_salt.zoo import build_model

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    total = warmup + steps
    model = build_model(
        teacher_preset if kind == "teacher" else student_preset, vocab_size=vocab_size, seed=0
    )
    timer = StepTimer(warmup)
    with tempfile.TemporaryDirectory() as out:
        common = dict(
            output_dir=out,
            max_steps=total,
            per_device_train_batch_size=batch_size,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="no",
            logging_steps=total,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        data = dict(
            train_dataset=random_blocks(vocab_size, block_size, total * batch_size),
            data_collator=default_data_collator,
            callbacks=[timer],
        )
        if kind == "kd":
            teacher = build_model(teacher_preset, vocab_size=vocab_size, seed=1)
            config = SALTConfig(**common, kd_steps=total, kd_weight=0.75)
            trainer = SALTTrainer(model=model, args=config, teacher_model=teacher, **data)
        else:
            trainer = Trainer(model=model, args=TrainingArguments(**common), **data)
        trainer.train()
    wall, cpu = timer.seconds()
    return wall / timer.steps, cpu / timer.steps


def measure_step_costs(
    *,
    teacher_preset: str,
    student_preset: str,
    vocab_size: int,
    block_size: int,
    batch_size: int,
    rounds: int = 5,
    steps: int = 20,
    warmup: int = 3,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, Any]:
    """Median seconds per step of each kind over ``rounds`` interleaved rounds, and every round's figure.

    Returns ``{kind: seconds, ..., "rounds": {kind: [(wall, cpu), ...]}, "cpu": {kind: CPU seconds}}``.
    """
    from tqdm.auto import tqdm

    seen: dict[str, list[tuple[float, float]]] = {k: [] for k in kinds}
    shape = dict(
        teacher_preset=teacher_preset,
        student_preset=student_preset,
        vocab_size=vocab_size,
        block_size=block_size,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
    )
    for _ in tqdm(range(rounds), desc="step costs (interleaved rounds)", unit="round"):
        for kind in kinds:
            seen[kind].append(time_steps(kind, **shape))
    out: dict[str, Any] = {k: statistics.median(w for w, _ in v) for k, v in seen.items()}
    out["cpu"] = {k: statistics.median(c for _, c in v) for k, v in seen.items()}
    out["rounds"] = seen
    return out
