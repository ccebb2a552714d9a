"""Cost of one training step of the same student: plain `transformers.Trainer` vs SALT stage 1 vs stage 2 (and,
where liger-kernel is installed, SALT stage 1 on Liger's kernel and Liger's fused-linear CE alone).

Every variant is a real ``Trainer.train()`` of the same student init on the same data, all in ONE process and
interleaved: round r runs one optimizer step of A, then of B, then of C, ... (each trainer runs in its own thread
and a baton lets exactly one of them step at a time). A step's time is measured from one ``on_step_begin`` to
its next, so it holds the whole loop iteration (batch fetch, forward, backward, optimizer). Per round we take the
ratio of each variant to the plain step of the same round, and report the median of those ratios: a shared
machine slows whole rounds, which the ratios cancel (variants timed in separate runs one after another can be off
by several times).

Peak memory (CUDA only): the variant's persistent tensors (its parameters, gradients and optimizer state, plus
the teacher) plus the peak allocation above them during its steps (``torch.cuda.max_memory_allocated``, reset
before each step). CPU runs report time only.

The FLOP floor printed beside stage 1 is ``1 + teacher forward / student step``, counted with
``torch.utils.flop_counter`` (matrix multiplies) on the benchmark's own shapes.

    python benchmarks/step_benchmark.py --threads 1                 # CPU config
    python benchmarks/step_benchmark.py --config gpu                # real sizes, bf16 (needs a CUDA GPU)
    python benchmarks/step_benchmark.py --config smoke --rounds 2   # tiny, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments


@dataclass(frozen=True)
class StepConfig:
    """Shapes of the two Llama models and the batch."""

    vocab: int
    s_hidden: int
    s_layers: int
    s_heads: int
    s_kv: int
    s_ffn: int
    t_hidden: int
    t_layers: int
    t_heads: int
    t_kv: int
    t_ffn: int
    batch: int
    seq: int
    rounds: int = 6
    warmup: int = 2
    bf16: bool = False


CONFIGS = {
    # the CPU figures in RESULTS.md
    "cpu": StepConfig(8192, 256, 4, 4, 2, 640, 128, 2, 2, 1, 320, batch=8, seq=256, rounds=8, warmup=2),
    # real sizes: a Llama student 1536 x 16 layers and its 768 x 8 teacher, vocabulary 128256, 4 x 2048 tokens
    "gpu": StepConfig(
        128256, 1536, 16, 12, 4, 4096, 768, 8, 6, 2, 2048, batch=4, seq=2048, rounds=6, warmup=2, bf16=True
    ),
    # tiny: the same code path in seconds (CI)
    "smoke": StepConfig(512, 64, 2, 4, 2, 128, 32, 1, 2, 1, 64, batch=2, seq=32, rounds=2, warmup=1),
}


def llama(cfg: StepConfig, role: str, seed: int) -> LlamaForCausalLM:
    p = "s" if role == "student" else "t"
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=cfg.vocab,
        hidden_size=getattr(cfg, f"{p}_hidden"),
        intermediate_size=getattr(cfg, f"{p}_ffn"),
        num_hidden_layers=getattr(cfg, f"{p}_layers"),
        num_attention_heads=getattr(cfg, f"{p}_heads"),
        num_key_value_heads=getattr(cfg, f"{p}_kv"),
        max_position_embeddings=cfg.seq,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


class RandomTokens(Dataset):
    """Fixed random token blocks (a torch Dataset: no `datasets` needed)."""

    def __init__(self, n: int, seq: int, vocab: int) -> None:
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Baton:
    """Lets the variants' training threads step one at a time, in a fixed order, round after round."""

    def __init__(self, names: list[str]) -> None:
        self.order, self.turn, self.done = list(names), 0, set()
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)

    def release(self, name: str, finished: bool = False) -> None:
        """Pass the turn on (only its holder moves it); a finished variant is skipped from now on."""
        with self.cond:
            if finished:
                self.done.add(name)
            if self.order[self.turn] == name and len(self.done) < len(self.order):
                i = self.turn
                for _ in range(len(self.order)):
                    i = (i + 1) % len(self.order)
                    if self.order[i] not in self.done:
                        break
                self.turn = i
            self.cond.notify_all()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Times each loop iteration (on_step_begin to the next one) while holding the baton."""

    def __init__(self, name: str, baton: Baton) -> None:
        self.name, self.baton = name, baton
        self.times: list[float] = []
        self.peaks: list[int] = []
        self._t: float | None = None
        self._base = 0

    def _stop(self) -> None:
        _sync()
        self.times.append(time.perf_counter() - self._t)
        if torch.cuda.is_available():
            self.peaks.append(torch.cuda.max_memory_allocated() - self._base)

    def _start(self) -> None:
        self.baton.wait(self.name)
        _sync()
        if torch.cuda.is_available():
            self._base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self._t = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._t is not None and state.global_step > 0:
            self._stop()
            self.baton.release(self.name)
            self._start()

    def on_train_end(self, args, state, control, **kwargs):
        self._stop()
        self.baton.release(self.name, finished=True)


# ------------------------------------------------------------------------------------------------- variants
def _liger_available() -> bool:
    from hf_salt.salt.losses import liger_available

    return liger_available()


class LigerCETrainer(Trainer):
    """The student alone, its loss from Liger's fused-linear cross-entropy on the final hidden states."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        lm = self.accelerator.unwrap_model(model)
        hidden = lm.model(input_ids=inputs["input_ids"], use_cache=False)[0]
        labels = torch.nn.functional.pad(inputs["labels"][:, 1:], (0, 1), value=-100)
        w = lm.lm_head.weight
        loss = LigerFusedLinearCrossEntropyLoss()(w, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1))
        return (loss, None) if return_outputs else loss


@dataclass(frozen=True)
class Variant:
    name: str
    needs_teacher: bool
    build: Callable[..., Trainer]
    available: Callable[[], bool] = lambda: True


def _plain(student, teacher, data, common, cb):
    return Trainer(model=student, args=TrainingArguments(**common), train_dataset=data, callbacks=[cb])


def _salt(kd: bool, backend: str):
    def build(student, teacher, data, common, cb):
        from hf_salt.salt.config import SALTConfig
        from hf_salt.salt.trainer import SALTTrainer

        args = SALTConfig(
            **common,
            kd_steps=common["max_steps"] if kd else 0,  # KD on every timed step
            kd_weight=0.5,
            kd_loss_backend=backend,
            teacher_offload_after_kd="keep",
        )
        return SALTTrainer(
            model=student, args=args, teacher_model=teacher, train_dataset=data, callbacks=[cb]
        )

    return build


def _liger_ce(student, teacher, data, common, cb):
    return LigerCETrainer(model=student, args=TrainingArguments(**common), train_dataset=data, callbacks=[cb])


VARIANTS = {
    v.name: v
    for v in (
        Variant("plain", False, _plain),
        Variant("salt-stage1", True, _salt(True, "torch")),
        Variant("salt-stage1-liger", True, _salt(True, "liger"), _liger_available),
        Variant("salt-stage2", True, _salt(False, "torch")),
        # Liger's fused-linear CE is a Triton kernel: CUDA only
        Variant("liger-fused-ce", False, _liger_ce, lambda: _liger_available() and torch.cuda.is_available()),
    )
}
DEFAULT_VARIANTS = ("plain", "salt-stage1", "salt-stage2")


# ------------------------------------------------------------------------------------------------- FLOPs
def flop_floor(cfg: StepConfig, device: str = "meta") -> float:
    """1 + (teacher forward FLOPs) / (plain student step FLOPs), matrix multiplies, one micro-batch; on the meta
    device nothing is computed, only counted."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(0, cfg.vocab, (cfg.batch, cfg.seq), device=device)
    flops = {}
    for role in ("student", "teacher"):
        with torch.device(device):
            model = llama(cfg, role, 0)
        counter = FlopCounterMode(display=False)
        with counter:
            if role == "student":
                model(input_ids=ids, labels=ids).loss.backward()
            else:
                with torch.no_grad():
                    model(input_ids=ids)
        flops[role] = counter.get_total_flops()
        del model
    return 1.0 + flops["teacher"] / flops["student"]


# ------------------------------------------------------------------------------------------------- run
def run(cfg: StepConfig, variants: list[str], device: str, output: Path | None = None) -> dict:
    """Interleave the variants for cfg.rounds measured rounds after cfg.warmup; return the figures."""
    names = [n for n in variants if VARIANTS[n].available()]
    skipped = [n for n in variants if n not in names]
    if "plain" not in names:
        raise ValueError("the variants must include 'plain' (the reference of every ratio).")
    names = ["plain"] + [n for n in names if n != "plain"]
    steps = cfg.rounds + cfg.warmup
    data = RandomTokens(steps * cfg.batch, cfg.seq, cfg.vocab)
    with torch.device(device):  # built where they train: initialising ~1B parameters on the CPU takes long
        init = llama(cfg, "student", 0).state_dict()
        teacher = None
        if any(VARIANTS[n].needs_teacher for n in names):
            teacher = llama(cfg, "teacher", 1)
            if cfg.bf16:
                teacher = teacher.to(torch.bfloat16)
    baton = Baton(names)
    common = dict(
        output_dir=str((output or Path("/tmp")) / "step_benchmark_trainer"),
        max_steps=steps,
        per_device_train_batch_size=cfg.batch,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        bf16=cfg.bf16,
        use_cpu=device == "cpu",
        seed=0,
        dataloader_num_workers=0,
    )
    timers, trainers = {}, {}
    for n in names:
        with torch.device(device):
            student = llama(cfg, "student", 0)
        student.load_state_dict(init)
        timers[n] = StepTimer(n, baton)
        trainers[n] = VARIANTS[n].build(student, teacher, data, common, timers[n])
    errors: dict[str, BaseException] = {}
    threads_n = torch.get_num_threads()

    def train(n: str) -> None:
        torch.set_num_threads(threads_n)
        try:
            trainers[n].train()
        except BaseException as e:  # noqa: BLE001 - reported, and the baton moves on
            errors[n] = e
            baton.release(n, finished=True)

    threads = [threading.Thread(target=train, args=(n,), name=n) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"variant(s) failed: {errors}") from next(iter(errors.values()))
    rows = []
    base = timers["plain"].times[cfg.warmup :]
    for n in names:
        times = timers[n].times[cfg.warmup :]
        ratios = [t / b for t, b in zip(times, base)]
        row = {
            "variant": n,
            "step_s": statistics.median(times),
            "time_ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        if torch.cuda.is_available() and device != "cpu":
            tr = trainers[n]
            persistent = _persistent_bytes(tr)
            row["peak_mb"] = (persistent + max(timers[n].peaks[cfg.warmup :])) / 2**20
        rows.append(row)
    if "peak_mb" in rows[0]:
        for r in rows:
            r["mem_ratio"] = r["peak_mb"] / rows[0]["peak_mb"]
    return {"config": asdict(cfg), "device": device, "threads": threads_n, "rows": rows, "skipped": skipped}


def _persistent_bytes(trainer: Trainer) -> int:
    """Parameters, gradients and optimizer state of this trainer's student, plus its teacher."""
    seen, total = set(), 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is not None and t.is_cuda and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for p in trainer.model.parameters():
        add(p.data)
        add(p.grad)
    for state in trainer.optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                add(v)
    teacher = getattr(trainer, "teacher_model", None)
    if teacher is not None:
        for p in teacher.parameters():
            add(p.data)
    return total


def table(result: dict, floor: float | None = None) -> str:
    has_mem = "peak_mb" in result["rows"][0]
    head = f"{'variant':<20}{'step (s)':>10}{'x plain':>9}{'  range':<16}" + (
        f"{'peak MB':>10}{'x plain':>9}" if has_mem else ""
    )
    lines = [head]
    for r in result["rows"]:
        line = f"{r['variant']:<20}{r['step_s']:>10.3f}{r['time_ratio']:>9.3f}  {r['ratio_min']:.2f}-{r['ratio_max']:.2f}".ljust(
            55
        )
        if has_mem:
            line += f"{r['peak_mb']:>10.0f}{r['mem_ratio']:>9.2f}"
        lines.append(line)
    if floor is not None:
        lines.append(f"FLOP floor of stage 1 (1 + teacher forward / student step): {floor:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    p.add_argument(
        "--rounds", type=int, default=None, help="Measured rounds (one step of every variant each)."
    )
    p.add_argument(
        "--variants", default=None, help="Comma-separated; default: plain,salt-stage1,salt-stage2."
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
    p.add_argument("--json", default=None, help="Write the figures to this JSON file.")
    a = p.parse_args(argv)
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # threads started later inherit it
        torch.set_num_threads(a.threads)
    cfg = CONFIGS[a.config]
    if a.rounds:
        cfg = replace(cfg, rounds=a.rounds)
    device = "cuda" if a.config == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--config gpu needs a CUDA GPU.")
    variants = a.variants.split(",") if a.variants else list(DEFAULT_VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    out_dir = Path(a.json).parent if a.json else None
    result = run(cfg, variants, device, out_dir)
    result["flop_floor"] = flop_floor(cfg)
    print(
        f"config {a.config}: {json.dumps(result['config'])}  device: {device}  threads: {result['threads']}"
    )
    print(table(result, result["flop_floor"]))
    if result["skipped"]:
        print(f"skipped (not available here): {result['skipped']}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
