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

import torch

from hf_salt.experiments.step_costs import time_steps

KIND = {"teacher": "teacher", "student": "student", "salt": "kd"}  # this script's names -> step_costs' kinds


def measure(variant: str, args: argparse.Namespace) -> tuple[float, float]:
    """(wall, CPU) tokens/s of one run of ``variant`` (teacher, student, salt), timed by
    :func:`hf_salt.experiments.step_costs.time_steps` (the benchmark's own step pricing)."""
    wall, cpu = time_steps(
        KIND[variant],
        teacher_preset=args.teacher,
        student_preset=args.student,
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
    )
    tokens = args.batch_size * args.block_size
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
    variants = ("teacher", "student", "salt")
    seen: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            seen[v].append(measure(v, args))
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
