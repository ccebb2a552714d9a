"""SALT_DS scoring throughput vs the teacher's plain forward, same model, data and hardware, one run.

    python benchmarks/salt_ds_throughput.py --preset llama-small-2x --seq 256 --rows 64 --batch_size 8

"plain forward" = `model(input_ids).logits` (full [batch, seq, vocab] logits, no_grad), the speed a
scoring pass is held against. "score_dataset" = the whole `hf_salt.salt_ds.score_dataset` call (Arrow
formatting, the teacher forward, chunked head, top-k, statistics, writing the score file), cache off.
Both are timed `--repeats` times, interleaved; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import datasets
import torch

from hf_salt.salt_ds import score_dataset
from hf_salt.zoo import build_model, parse_dtype


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="llama-small-2x", help="hf_salt.zoo preset of the teacher")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch_size", "--batch-size", type=int, default=8)
    p.add_argument("--chunk_size", "--chunk-size", type=int, default=None)
    p.add_argument("--top_k", "--top-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()

    device = torch.device(args.device)
    model = (
        build_model(args.preset, vocab_size=args.vocab, seed=0)
        .to(device, parse_dtype(args.dtype, "--dtype"))
        .eval()
    )
    ids = torch.randint(0, args.vocab, (args.rows, args.seq), generator=torch.Generator().manual_seed(0))
    ds = datasets.Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": ids.tolist()}
    )
    tokens = args.rows * args.seq
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def plain() -> tuple[float, float]:
        sync()
        t, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for s in range(0, args.rows, args.batch_size):
                batch = ids[s : s + args.batch_size].to(device)
                _ = model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
        sync()
        return tokens / (time.perf_counter() - t), tokens / (time.process_time() - c)

    def scored() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            t, c = time.perf_counter(), time.process_time()
            score_dataset(
                ds,
                model,
                top_k=args.top_k,
                batch_size=args.batch_size,
                chunk_size=args.chunk_size,
                device=device,
                cache_dir=tmp,
                load_from_cache_file=False,
                teacher_hash="benchmark",
            )
            sync()
            return tokens / (time.perf_counter() - t), tokens / (time.process_time() - c)

    plain(), scored()  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "score": []}
    for _ in range(args.repeats):
        runs["plain"].append(plain())
        runs["score"].append(scored())
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"device: {name}; {args.preset} vocab {args.vocab}, {args.rows} x {args.seq} tokens, batch {args.batch_size}"
    )
    # wall clock is what a user waits; CPU time (all threads of this process) is robust on a shared machine
    for i, clock in enumerate(("wall", "CPU-time")):
        fwd = statistics.median(r[i] for r in runs["plain"])
        sco = statistics.median(r[i] for r in runs["score"])
        print(
            f"[{clock}] plain forward (full logits): {fwd:,.0f} tokens/s | score_dataset: {sco:,.0f} tokens/s"
            f" | ratio {sco / fwd:.2f}x   (runs plain: {', '.join(f'{r[i]:,.0f}' for r in runs['plain'])};"
            f" score: {', '.join(f'{r[i]:,.0f}' for r in runs['score'])})"
        )


if __name__ == "__main__":
    main()
