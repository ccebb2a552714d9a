"""Confirm a claimed step fraction with a run whose own schedule is that long.

A benchmark reads "arm X reaches the baseline's quality at fraction f of its steps" off a full-length run, in
the middle of X's learning-rate schedule. A user who wants the saving trains a run of f x the steps, whose
schedule decays sooner; that is not the same run. This script trains it: the arm of one seed with
``max_steps = f x the baseline's steps`` (rounded up to ``eval_every``), same config, same teacher, and compares
its final validation loss with the full run's target (the mean of the baseline's last evaluations).

Run (after the benchmark it checks):
    python benchmarks/confirm_fraction.py --config benchmarks/configs/payoff_cpu.yaml --arm hypercloning \
        --seed 2 --fraction 0.45
The result goes to ``<output_dir>/confirm/<arm>-seed<seed>-<steps>.json`` and is printed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import yaml


def main(argv: list[str] | None = None) -> dict:
    import torch

    from hf_salt.experiments.benchmark import Benchmark, BenchmarkConfig
    from hf_salt.experiments.metrics import target_loss
    from hf_salt.io import write_text_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="The benchmark's YAML config.")
    ap.add_argument("--arm", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument(
        "--fraction", type=float, required=True, help="The claimed fraction of the baseline's steps."
    )
    ap.add_argument("--output_dir", default=None, help="The benchmark's run folder (default: the config's).")
    ap.add_argument("--corpus", default=None, help="The corpus the benchmark ran on, if not the config's.")
    ap.add_argument(
        "--tokenizer", default=None, help="The tokenizer the benchmark ran with, if not the config's."
    )
    args = ap.parse_args(argv)
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction must be in (0, 1), got {args.fraction}.")
    raw = yaml.safe_load(Path(args.config).read_text())
    raw.update({k: getattr(args, k) for k in ("output_dir", "corpus", "tokenizer") if getattr(args, k)})
    full = Benchmark(BenchmarkConfig(**raw))
    same = "pass the benchmark run's --config, --corpus and --tokenizer (and its other overrides)"
    base_path = full._run_path(args.seed, "baseline")
    if not base_path.exists():
        raise SystemExit(f"{base_path} is missing: run the benchmark for seed {args.seed} first.")
    baseline = json.loads(base_path.read_text())
    if baseline.get("key") != full.run_key("baseline"):
        raise SystemExit(f"{base_path} was trained with other settings than these: {same}.")
    teacher_meta = Path(full.cfg.output_dir) / f"teacher-seed{full.cfg.teacher_seed}" / "teacher.json"
    if not teacher_meta.exists() or json.loads(teacher_meta.read_text()).get("key") != full.teacher_key():
        raise SystemExit(f"{teacher_meta.parent} holds no teacher trained with these settings: {same}.")
    target = target_loss(baseline, full.cfg.target_evals)
    every = full.cfg.eval_every
    steps = max(every, math.ceil(args.fraction * full.cfg.max_steps / every) * every)
    out = Path(full.cfg.output_dir) / "confirm" / f"{args.arm}-seed{args.seed}-{steps}.json"
    short = BenchmarkConfig(
        **{**raw, "max_steps": steps, "seeds": [args.seed], "arms": [args.arm], "output_dir": str(out.parent)}
    )  # its checkpoints go under confirm/, never into the full run's folders
    bench = Benchmark(short)
    if full.cfg.num_threads:
        torch.set_num_threads(full.cfg.num_threads)
    bench.load_data()
    teacher, record = full.teacher(full.cfg.teacher_seed)  # the full run's saved teacher (same key)
    print(
        f"[confirm] {args.arm}, seed {args.seed}: a {steps}-step run (its own schedule) against target {target:.4f}"
    )
    run = bench.run_arm(args.arm, args.seed, teacher, record)
    final = run["curve"]["loss"][-1]
    result = {
        "arm": args.arm,
        "seed": args.seed,
        "claimed_fraction": args.fraction,
        "steps": steps,
        "of_steps": full.cfg.max_steps,
        "target_loss": target,
        "final_loss": final,
        "reached": final <= target,
        "curve": run["curve"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    verdict = "reaches" if result["reached"] else "does NOT reach"
    print(
        f"[confirm] final {final:.4f} {verdict} the target {target:.4f} ({steps}/{full.cfg.max_steps} steps); {out}"
    )
    return result


if __name__ == "__main__":
    main()
