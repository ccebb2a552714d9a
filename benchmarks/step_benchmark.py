"""Cost of one training step of the same student: plain `transformers.Trainer` vs SALT stage 1 vs stage 2.

Each variant runs `--warmup` + `--steps` optimizer steps through the real Trainer (same model init, same data);
we report the median time of the measured steps and the peak memory of the run:
- CUDA: `torch.cuda.max_memory_allocated()` (reset before each variant);
- CPU: peak bytes traced by torch's CPU allocator profiler is not reliable across versions, so we use the
  peak RSS growth of a fresh subprocess per variant (`resource.getrusage(...).ru_maxrss` minus the RSS after
  building the models).

    python benchmarks/step_benchmark.py            # CPU, tiny config
    python benchmarks/step_benchmark.py --gpu      # vocab 128k, batch 4 x 2048, bf16 (needs a CUDA GPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

CPU_CFG = dict(
    vocab=8192, student_hidden=256, teacher_hidden=128, layers=4, batch=8, seq=256, steps=6, warmup=2
)
GPU_CFG = dict(
    vocab=128256, student_hidden=2048, teacher_hidden=1024, layers=8, batch=4, seq=2048, steps=10, warmup=3
)


def _model(vocab: int, hidden: int, layers: int, seed: int, seq: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=seq,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


class _Timer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_variant(variant: str, cfg: dict, gpu: bool) -> dict:
    from hf_salt.salt.config import SALTConfig
    from hf_salt.salt.trainer import SALTTrainer

    n = (cfg["steps"] + cfg["warmup"]) * cfg["batch"]
    ids = torch.randint(0, cfg["vocab"], (n, cfg["seq"]), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    student = _model(cfg["vocab"], cfg["student_hidden"], cfg["layers"], 0, cfg["seq"])
    teacher = (
        _model(cfg["vocab"], cfg["teacher_hidden"], cfg["layers"] // 2, 1, cfg["seq"])
        if variant != "plain"
        else None
    )
    if gpu and teacher is not None:
        teacher = teacher.to(torch.bfloat16)
    common = dict(
        output_dir="/tmp/step_benchmark",
        max_steps=cfg["steps"] + cfg["warmup"],
        per_device_train_batch_size=cfg["batch"],
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        disable_tqdm=True,
        bf16=gpu,
        use_cpu=not gpu,
        seed=0,
    )
    timer = _Timer()
    if variant == "plain":
        trainer = Trainer(
            model=student, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer]
        )
    else:
        kd_steps = 10**6 if variant == "salt-stage1" else 0
        args = SALTConfig(**common, kd_steps=kd_steps, kd_weight=0.5, teacher_offload_after_kd="keep")
        trainer = SALTTrainer(
            model=student, args=args, teacher_model=teacher, train_dataset=data, callbacks=[timer]
        )
    rss0 = _rss_mb()
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _rss_mb() - rss0
    measured = timer.times[cfg["warmup"] :]
    return {"variant": variant, "step_s": statistics.median(measured), "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="GPU config: vocab 128k, batch 4 x 2048, bf16.")
    p.add_argument("--steps", type=int, default=None, help="Measured steps per variant.")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: one variant per subprocess
    p.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    a = p.parse_args()
    cfg = dict(GPU_CFG if a.gpu else CPU_CFG)
    if a.steps:
        cfg["steps"] = a.steps
    if a.gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA GPU.")
    if a.variant:
        print(json.dumps(run_variant(a.variant, cfg, a.gpu)))
        return
    rows = []
    for variant in ("plain", "salt-stage1", "salt-stage2"):
        cmd = [sys.executable, __file__, "--variant", variant] + (["--gpu"] if a.gpu else [])
        cmd += ["--steps", str(cfg["steps"])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]
    print(f"config: {json.dumps(cfg)}  device: {'cuda ' + torch.cuda.get_device_name(0) if a.gpu else 'cpu'}")
    print(f"{'variant':<14}{'step (s)':>10}{'x plain':>9}{'peak MB':>10}{'x plain':>9}")
    for r in rows:
        r["time_ratio"] = r["step_s"] / base["step_s"]
        r["mem_ratio"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        print(
            f"{r['variant']:<14}{r['step_s']:>10.3f}{r['time_ratio']:>9.2f}{r['peak_mb']:>10.0f}{r['mem_ratio']:>9.2f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": cfg, "gpu": a.gpu, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
