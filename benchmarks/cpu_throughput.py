"""Training throughput (tokens/s) of a teacher / student pair on one CPU thread, through the real trainers.

Sizes a CPU benchmark: how many tokens per arm fit a time budget. Each variant runs in this process, one after the
other, ``--rounds`` times interleaved (teacher step, student step, SALT stage-1 step), on random token blocks;
the first ``--warmup`` steps of each run are not timed. Reported: the median over rounds of tokens per second of
wall-clock and per second of this process' CPU time (with one thread, the CPU figure is what an idle core would
give; on a shared machine the wall-clock one is lower by the share of the core the process got).

Run:
    python benchmarks/cpu_throughput.py --teacher llama-micro --student llama-micro-2x --vocab_size 2048
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback, default_data_collator


class _StepTimer(TrainerCallback):
    """Wall and CPU time of the optimizer steps after the first ``warmup`` ones."""

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


def _blocks(vocab: int, block: int, n: int) -> Dataset:
    ids = torch.randint(0, vocab, (n, block), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})


def measure(variant: str, args: argparse.Namespace, data: Dataset) -> tuple[float, float]:
    """(wall, CPU) tokens/s of one run of ``variant`` (teacher, student, salt)."""
    from hf_salt.salt import SALTConfig, SALTTrainer
    from hf_salt.zoo import build_model

    steps = args.warmup + args.steps
    preset = args.teacher if variant == "teacher" else args.student
    model = build_model(preset, vocab_size=args.vocab_size, seed=0)
    teacher = build_model(args.teacher, vocab_size=args.vocab_size, seed=1)
    timer = _StepTimer(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        config = SALTConfig(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=args.batch_size,
            kd_steps=steps if variant == "salt" else 0,
            kd_weight=0.75,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="no",
            logging_steps=steps,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = SALTTrainer(
            model=model,
            args=config,
            teacher_model=teacher,
            train_dataset=data,
            data_collator=default_data_collator,
            callbacks=[timer],
        )
        trainer.train()
    tokens = timer.steps * args.batch_size * args.block_size
    wall, cpu = timer.seconds()
    return tokens / wall, tokens / cpu


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="llama-micro")
    parser.add_argument("--student", default="llama-micro-2x")
    parser.add_argument("--vocab_size", type=int, default=2048)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="Timed optimizer steps per run.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed optimizer steps per run.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = _blocks(args.vocab_size, args.block_size, (args.warmup + args.steps) * args.batch_size)
    variants = ("teacher", "student", "salt")
    seen: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            seen[v].append(measure(v, args, data))
    result = {
        v: (statistics.median(w for w, _ in x), statistics.median(c for _, c in x)) for v, x in seen.items()
    }
    print(
        f"{args.threads} thread(s), {args.batch_size} x {args.block_size} tokens per step, vocab {args.vocab_size}, "
        f"median of {args.rounds} interleaved rounds:"
    )
    for v, x in seen.items():
        name = {"teacher": args.teacher, "student": args.student, "salt": f"SALT stage 1 ({args.student})"}[v]
        wall, cpu = result[v]
        rounds = ", ".join(f"{w:,.0f} / {c:,.0f}" for w, c in x)
        print(
            f"  {name}: {wall:,.0f} tokens/s wall-clock, {cpu:,.0f} tokens/s of CPU time (rounds: {rounds})"
        )
    return result


if __name__ == "__main__":
    main()
