"""hf-salt's whole GPU check in one command: five parts, each in its own process with its own time budget.

Each part writes ``<out>/<part>.json`` as soon as it has its figures, and the driver rewrites
``<out>/summary.json`` after every part, so a crash or a time-out in one part loses nothing of the others. The
short table is printed last.

    bash benchmarks/gpu/run.sh                       # on the GPU machine (installs the carried wheels first)
    python benchmarks/gpu/suite.py --smoke           # the same code path on CPU at tiny sizes (CI runs this)
    python benchmarks/gpu/suite.py --parts step,hypercloning --out outputs/gpu-suite

Parts (budgets in seconds on the GPU; ``--smoke`` uses tiny sizes and 4x the budgets, for a shared CPU):

1. ``tests``: ``pytest -m gpu`` (bf16 SALT on one GPU: plain, DDP config, FSDP2, ZeRO-2/3 where DeepSpeed is
   installed; each loss curve against the fp32 run).
2. ``step``: the stage-1 step at real sizes, variants interleaved in one process (``benchmarks/step_benchmark.py
   --config gpu``): plain Trainer, SALT stage 1 (torch and Liger backends), stage 2, Liger's fused-linear CE.
3. ``salt_ds``: SALT_DS scoring throughput against the teacher's plain forward (``salt_ds_throughput.py``).
4. ``hypercloning``: a ~1B Llama grown 2x on the GPU: time, and the largest logit difference in fp32 and bf16.
5. ``reproduce``: a corpus built on the machine from its own site-packages (``build_code_corpus.py``), then a
   teacher and its 2x-wide student, arms baseline / SALT / HyperCloning, one seed
   (``reproduce.py --config benchmarks/configs/gpu-short.yaml``): steps to the baseline's final loss.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: int
    run: Callable[[Path, bool], dict]
    summary: Callable[[dict], str]


def _python(args: list[str], log: Path, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a Python script of the repository, its output teed into ``log``."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(args[:2])} exited with {proc.returncode}:\n{tail}")
    return proc


def _write(out: Path, name: str, result: dict) -> dict:
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / f"{name}.json")
    return result


# ------------------------------------------------------------------------------------------------ 1. tests
def part_tests(out: Path, smoke: bool) -> dict:
    xml = out / "tests.xml"
    cmd = [
        "-m",
        "pytest",
        "-m",
        "gpu",
        "tests/test_gpu.py",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
    ]
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, check=False)
    (out / "tests.log").write_text(proc.stdout + proc.stderr)
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                reason = node.get("message", "")
                break
        else:
            reason = ""
        cases.append(
            {
                "test": case.get("name"),
                "outcome": outcome,
                "time_s": float(case.get("time", 0)),
                "why": reason,
            }
        )
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"returncode": proc.returncode, "counts": counts, "cases": cases}


def sum_tests(r: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in r["counts"].items() if v)


# ------------------------------------------------------------------------------------------------ 2. step
STEP_VARIANTS = "plain,salt-stage1,salt-stage1-liger,salt-stage2,liger-fused-ce"


def part_step(out: Path, smoke: bool) -> dict:
    sys.path.insert(0, str(BENCH))
    import step_benchmark

    argv = [
        "--config",
        "smoke" if smoke else "gpu",
        "--variants",
        STEP_VARIANTS,
        "--json",
        str(out / "step_raw.json"),
    ]
    if smoke:
        argv += ["--rounds", "1"]
    return step_benchmark.main(argv)


def sum_step(r: dict) -> str:
    cells = []
    for row in r["rows"][1:]:
        mem = f", {row['mem_ratio']:.2f}x mem" if "mem_ratio" in row else ""
        cells.append(f"{row['variant']} {row['time_ratio']:.2f}x{mem}")
    return "; ".join(cells) + f" (floor {r['flop_floor']:.3f})"


# ------------------------------------------------------------------------------------------------ 3. SALT_DS
def part_salt_ds(out: Path, smoke: bool) -> dict:
    if smoke:
        args = ["--preset", "llama-tiny", "--seq", "32", "--rows", "8", "--batch-size", "4", "--repeats", "1"]
    else:
        args = [
            "--preset",
            "llama-40m",
            "--seq",
            "1024",
            "--rows",
            "256",
            "--batch-size",
            "32",
            "--dtype",
            "bfloat16",
        ]
    proc = _python([str(BENCH / "salt_ds_throughput.py"), *args], out / "salt_ds.log")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("device:", "[wall]", "[CPU-time]"))]
    wall = next(ln for ln in lines if ln.startswith("[wall]"))
    ratio = float(re.search(r"ratio ([0-9.]+)x", wall).group(1))
    return {"args": args, "wall_ratio": ratio, "lines": lines}


def sum_salt_ds(r: dict) -> str:
    return f"score_dataset / plain forward = {r['wall_ratio']:.2f}x (wall)"


# ------------------------------------------------------------------------------------------------ 4. HyperCloning
def part_hypercloning(out: Path, smoke: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hf_salt import hypercloning as hc

    device = "cpu" if smoke else "cuda"
    if smoke:
        shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=256)  # fmt: skip
    else:  # Llama-3.2-1B's shape
        shape = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256)  # fmt: skip
    cfg = LlamaConfig(**shape, tie_word_embeddings=True)
    result: dict = {"shape": shape, "device": device, "runs": {}}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        with torch.device(device):
            src = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype)).eval()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        big = hc.clone(src, 2, warn_symmetry=False, verify=False).to(device)  # verified below, untimed
        if device == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        diff = hc.verify(src, big, batch_size=2, seq_len=128 if not smoke else 16)
        result["runs"][dtype] = {
            "source_params": src.num_parameters(),
            "clone_params": big.num_parameters(),
            "clone_s": secs,
            "max_logit_diff": diff,
        }
        _write(out, "hypercloning", result)  # figures as soon as there are some
        del src, big
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


def sum_hypercloning(r: dict) -> str:
    return "; ".join(
        f"{k}: {v['source_params'] / 1e9:.2f}B -> {v['clone_params'] / 1e9:.2f}B in {v['clone_s']:.1f}s, "
        f"max |logit diff| {v['max_logit_diff']:.2e}"
        for k, v in r["runs"].items()
    )


# ------------------------------------------------------------------------------------------------ 5. reproduction
def _site_packages_root(package: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent


def part_reproduce(out: Path, smoke: bool) -> dict:
    corpus = out / "code-corpus"
    run_dir = out / "reproduce"
    if smoke:  # this repository's own package: a few hundred KB of Python
        roots = [str(REPO / "hf_salt")]
        flags = ["--corpus", str(corpus / "data"), "--teacher_preset", "llama-tiny", "--student_preset", "llama-tiny-2x",
                 "--block_size", "32", "--batch_size", "4", "--max_steps", "8", "--teacher_steps", "8",
                 "--eval_every", "4", "--eval_blocks", "8", "--warmup_steps", "1", "--corpus_fraction", "0",
                 "--single_epoch", "false", "--bf16", "false", "--disable_tqdm", "true", "--kd_steps", "0.25"]  # fmt: skip
    else:  # ~14 MB of Python installed on the machine (~8M tokens): more than the 3.9M the run reads once
        roots = [str(_site_packages_root("torch") / "_inductor")]
        roots += [str(_site_packages_root(p)) for p in ("accelerate", "peft")]
        flags = ["--corpus", str(corpus / "data")]
    split = ["--validation_fraction", "0.2" if smoke else "0.02", "--token_sample", "0.02"]
    _python([str(BENCH / "build_code_corpus.py"), "--output", str(corpus), "--roots", *roots, *split],
            out / "corpus.log")  # fmt: skip
    manifest = json.loads((corpus / "manifest.json").read_text())
    _python(
        [str(BENCH / "reproduce.py"), "--config", str(BENCH / "configs" / "gpu-short.yaml"), *flags,
         "--output_dir", str(run_dir), "--report_dir", str(run_dir), "--results_md", str(run_dir / "RESULTS.md")],
        out / "reproduce.log",
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    from hf_salt.experiments.metrics import aggregate

    arms = {
        row["arm"]: {
            "step_frac": row["step_frac"],
            "wall_frac": row["wall_frac"],
            "final_loss": row["final_loss"],
        }
        for row in aggregate(results)
    }
    keep = {k: v for k, v in manifest.items() if k not in ("files", "distributions")}
    return {"corpus": keep, "arms": arms, "results": results}


def sum_reproduce(r: dict) -> str:
    def fmt(values: list) -> str:
        return "/".join("never" if v is None else f"{v:.2f}" for v in values)

    return "; ".join(f"{arm} {fmt(m['step_frac'])} of the baseline's steps" for arm, m in r["arms"].items())


PARTS = {
    p.name: p
    for p in (
        # 490 s in all: with the wheels' install (~15 s) and Python start-ups, under 9 minutes
        Part("tests", 120, part_tests, sum_tests),
        Part("step", 120, part_step, sum_step),
        Part("salt_ds", 30, part_salt_ds, sum_salt_ds),
        Part("hypercloning", 40, part_hypercloning, sum_hypercloning),
        Part("reproduce", 180, part_reproduce, sum_reproduce),
    )
}


# ------------------------------------------------------------------------------------------------ driver
SMOKE_BUDGET_FACTOR = (
    4  # tiny sizes, but a shared CPU spends most of a part starting Python and importing torch
)


def run_part(name: str, out: Path, smoke: bool) -> None:
    """Child process: run one part and write its JSON."""
    if smoke:
        import torch

        torch.set_num_threads(1)
    _write(out, name, PARTS[name].run(out, smoke))


def drive(parts: list[str], out: Path, smoke: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"smoke": smoke, "python": sys.version.split()[0], "parts": {}}
    summary.update(_environment())
    for name in parts:
        part = PARTS[name]
        t = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_part", name, "--out", str(out)]
        if smoke:
            cmd.append("--smoke")
        log = open(out / f"{name}.driver.log", "w")
        budget = part.budget_s * (SMOKE_BUDGET_FACTOR if smoke else 1)
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and everything it started
            proc.wait()
            status = f"timed out after {budget}s"
        log.close()
        entry = {"status": status, "wall_s": round(time.perf_counter() - t, 1), "budget_s": budget}
        path = out / f"{name}.json"
        if path.exists():
            try:
                entry["summary"] = part.summary(json.loads(path.read_text()))
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                entry["summary"] = f"(partial figures in {path.name}: {e!r})"
        if status != "ok":
            entry["log_tail"] = (out / f"{name}.driver.log").read_text()[-2000:]
        summary["parts"][name] = entry
        _write(out, "summary", summary)
    return summary


def _environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for dist in (
        "torch",
        "transformers",
        "accelerate",
        "peft",
        "datasets",
        "liger-kernel",
        "deepspeed",
        "triton",
    ):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = None
    return {"environment": env}


def table(summary: dict) -> str:
    lines = [f"hf-salt GPU suite ({'smoke, CPU' if summary['smoke'] else summary['environment']['device']})"]
    lines.append(json.dumps(summary["environment"]))
    for name, e in summary["parts"].items():
        lines.append(
            f"{name:<13}{e['status']:<24}{e['wall_s']:>7.1f}s / {e['budget_s']}s  {e.get('summary', '')}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--smoke", action="store_true", help="CPU, tiny sizes: the same code path in about a minute."
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated subset of {','.join(PARTS)}.")
    p.add_argument("--out", default=None, help="Output folder (default outputs/gpu-suite, or -smoke).")
    p.add_argument("--_part", default=None, help=argparse.SUPPRESS)  # internal: run one part in this process
    a = p.parse_args(argv)
    out = Path(a.out or REPO / "outputs" / ("gpu-suite-smoke" if a.smoke else "gpu-suite"))
    if a._part:
        run_part(a._part, out, a.smoke)
        return 0
    parts = a.parts.split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; known: {list(PARTS)}")
    if not a.smoke:
        import torch

        if not torch.cuda.is_available():
            p.error("no CUDA device: run with --smoke on CPU.")
    summary = drive(parts, out, a.smoke)
    print(json.dumps(summary, indent=2))
    print(table(summary))
    return 0 if all(e["status"] == "ok" for e in summary["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
