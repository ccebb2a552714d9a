"""Time and peak memory (RSS) of HyperCloning a Llama-style model on the CPU.

The source is built from a config with random weights (no download); the default is Llama-3.2-1B's shape
(hidden 2048, FFN 8192, 16 layers, 32 heads / 8 kv heads, vocab 128256, tied), grown 2x -> ~4.4B.

    python benchmarks/hypercloning_speed.py --dtype bfloat16 --width 2
    # side by side with another implementation (e.g. an older checkout's hf_salt/hypercloning folder):
    git archive <commit> hf_salt/hypercloning | tar -x -C /tmp/old
    python benchmarks/hypercloning_speed.py --compare-with /tmp/old/hf_salt/hypercloning --repeats 2

With ``--compare-with`` the runs are interleaved in one process (old, new, new with verification, ...), so
load from other jobs affects every variant alike.

``--pipeline`` times what ``hf-salt grow`` does end to end (load the saved source, grow, save), interleaved:
the floor (load + tile + save, no forward at all), the default (verified) grow, ``--no_verify``, and with
``--compare-with`` the other implementation's grow (its clone, then its CLI's second ``verify()`` on 2x16
tokens). ``--family gemma3`` uses a Gemma-3 text model (its ``sqrt(hidden)`` embedding scale). Each run prints wall
seconds and the CPU seconds of the process (steadier on a shared machine); ``--threads 1`` avoids two torch
threads waiting on each other when other jobs hold the cores:

    python benchmarks/hypercloning_speed.py --pipeline --family gemma3 --hidden 512 --ffn 2048 --layers 8 \
        --heads 8 --kv_heads 2 --vocab 32000 --compare-with /tmp/old/hf_salt/hypercloning --repeats 2
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_salt import hypercloning as hc
from hf_salt.zoo import parse_dtype


def rss_gb() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


class PeakRSS:
    """Samples RSS every 20 ms in a thread (ru_maxrss would include everything before the clone)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_gb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gb())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv_heads", "--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument(
        "--snr_db",
        "--snr-db",
        type=float,
        default=None,
        help="noise of the clones (with --pipeline: of the grows)",
    )
    ap.add_argument(
        "--verify", action="store_true", help="also run verify() on 1x8 tokens (slow for big models)"
    )
    ap.add_argument("--compare-with", default=None, help="folder of another hypercloning package to time too")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repetitions with --compare-with")
    ap.add_argument("--pipeline", action="store_true", help="time load + grow + save against the floor")
    ap.add_argument(
        "--warmup_rounds",
        type=int,
        default=1,
        help="untimed rounds of every --pipeline variant first (0 for a 1B source, where a round takes minutes)",
    )
    ap.add_argument(
        "--family", default="llama", choices=["llama", "gemma3"], help="source family (--pipeline)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's; 1 is steadier on a shared machine)",
    )
    ap.add_argument(
        "--one_thread_too",
        action="store_true",
        help="with --pipeline: also time the default grow on 1 thread, to see what the other threads buy",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = parse_dtype(args.dtype, "--dtype")
    if args.pipeline:
        pipeline(args, dtype)
        return
    cfg = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip
    t0 = time.perf_counter()
    with torch.device("meta"):
        src = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    src = src.to_empty(device="cpu")
    with torch.no_grad():  # cheap random weights: HF's init is not what we measure
        for p in src.parameters():
            p.uniform_(-0.02, 0.02)
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float) / cfg.head_dim))
        src.model.rotary_emb.inv_freq.copy_(inv_freq)  # to_empty left the RoPE buffers uninitialised
        src.model.rotary_emb.original_inv_freq.copy_(inv_freq)
    src.tie_weights()
    src.eval()
    before = rss_gb()
    print(
        f"source: {src.num_parameters() / 1e9:.3f}B params {args.dtype}, built in {time.perf_counter() - t0:.1f}s, RSS {before:.2f} GB"
    )
    if args.compare_with:
        compare(src, args)
        return
    with PeakRSS() as peak:
        t = time.perf_counter()
        big = hc.clone(src, args.width, snr_db=args.snr_db, warn_symmetry=False, verify=False)
        secs = time.perf_counter() - t
    print(
        f"clone {args.width}x: {big.num_parameters() / 1e9:.3f}B params in {secs:.1f}s on {torch.get_num_threads()} threads; "
        f"RSS {before:.2f} -> peak {peak.peak:.2f} GB (+{peak.peak - before:.2f}); "
        f"destination tensors {sum(t.numel() * t.element_size() for t in {id(p): p for p in big.parameters()}.values()) / 2**30:.2f} GB; "
        f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"
    )
    if args.verify:
        t = time.perf_counter()
        diff = hc.verify(src, big, batch_size=1, seq_len=8)
        print(
            f"verify ({args.dtype}, 1x8 tokens): max |logit diff| {diff:.3e} in {time.perf_counter() - t:.1f}s"
        )


def _load_package(folder: str, name: str = "hypercloning_compared"):
    """Import a hypercloning package folder under another name (its relative imports keep working)."""
    import importlib.util
    import sys
    from pathlib import Path

    init = Path(folder) / "__init__.py"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def compare(src: torch.nn.Module, args: argparse.Namespace) -> None:
    """Interleaved timings: the other implementation, this one, and this one with its traced check."""
    import gc

    other = _load_package(args.compare_with)
    variants = {
        "other": lambda: other.clone(src, args.width, snr_db=args.snr_db, warn_symmetry=False),
        "this (verify=False)": lambda: hc.clone(
            src, args.width, snr_db=args.snr_db, warn_symmetry=False, verify=False
        ),
        "this (verify=True)": lambda: hc.clone(src, args.width, snr_db=args.snr_db, warn_symmetry=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            gc.collect()
            before = rss_gb()
            with PeakRSS() as peak:
                t = time.perf_counter()
                big = run()
                secs = time.perf_counter() - t
            times[name].append(secs)
            print(
                f"{name:20s} {secs:6.1f}s  RSS {before:.2f} -> peak {peak.peak:.2f} GB ({big.num_parameters() / 1e9:.3f}B params)",
                flush=True,
            )
            del big
    for name, ts in times.items():
        print(f"{name:20s} min {min(ts):.1f}s  mean {sum(ts) / len(ts):.1f}s over {len(ts)}")


def _source_config(args: argparse.Namespace):
    from transformers import Gemma3TextConfig

    common = dict(
        hidden_size=args.hidden, intermediate_size=args.ffn, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
        tie_word_embeddings=True,
    )  # fmt: skip
    if args.family == "gemma3":
        return Gemma3TextConfig(head_dim=args.hidden // args.heads, **common)
    return LlamaConfig(**common)


def _floor(folder: str, width: int, out: str) -> None:
    """Load + tile + save with no forward pass: plan and assign every tensor, nothing checked."""
    from hf_salt.hypercloning import engine

    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    dest = engine.build_empty(model, engine.grown_config(model, width, width, 1, "interleave", None))
    norm = model.model.norm  # the norm before the tied head (named here: finding it needs a forward)
    final_norm = next(k for k, v in model.named_modules() if v is norm)
    plan = engine.plan(model, dest, width, width, 1, "interleave", True, final_norm)
    engine.assign_all(model, plan, next(model.parameters()).dtype)
    plan.dest.save_pretrained(out)


def _grow(
    folder: str, width: int, out: str, verify: bool, package=hc, cli_verify: bool = False, snr_db=None
) -> None:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    big = package.clone(model, width, snr_db=snr_db, warn_symmetry=False, verify=verify)
    if cli_verify:  # the other implementation's CLI checked the logits again on 2x16 tokens
        package.verify(model, big)
    big.save_pretrained(out)


def _on_one_thread(run, *args, **kwargs) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def pipeline(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """Interleaved end-to-end timings of ``hf-salt grow``'s work against the load + tile + save floor."""
    import gc
    import shutil
    import tempfile

    torch.manual_seed(0)
    src = AutoModelForCausalLM.from_config(_source_config(args), dtype=dtype).eval()
    tmp = tempfile.mkdtemp(prefix="hc-speed-")
    try:
        folder = os.path.join(tmp, "src")
        src.save_pretrained(folder)
        print(
            f"source: {args.family}, {src.num_parameters() / 1e6:.1f}M params {args.dtype}, grown {args.width}x"
        )
        del src
        variants = {
            "floor (load+tile+save)": lambda out: _floor(folder, args.width, out),
            "grow (default, verified)": lambda out: _grow(folder, args.width, out, True, snr_db=args.snr_db),
            "grow --no_verify": lambda out: _grow(folder, args.width, out, False, snr_db=args.snr_db),
        }
        if args.one_thread_too:
            variants["grow (default), 1 thread"] = lambda out: _on_one_thread(
                _grow, folder, args.width, out, True, snr_db=args.snr_db
            )
        if args.compare_with:
            other = _load_package(args.compare_with)
            variants["other grow (verified)"] = lambda out: _grow(folder, args.width, out, True, other, True)
            variants["other grow --no_verify"] = lambda out: _grow(folder, args.width, out, False, other)
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpu: dict[str, list[float]] = {k: [] for k in variants}  # CPU seconds of this process (all threads)
        for _ in range(args.warmup_rounds):  # warm-up (imports, first reads of the source files): not timed
            for run in variants.values():
                run(os.path.join(tmp, "warm"))
                shutil.rmtree(os.path.join(tmp, "warm"))
        print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
        for _ in range(args.repeats):
            for name, run in variants.items():
                gc.collect()
                out = os.path.join(tmp, "out")
                t, c = time.perf_counter(), time.process_time()
                run(out)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                shutil.rmtree(out)
                print(f"{name:26s} {times[name][-1]:6.2f}s  cpu {cpu[name][-1]:6.2f}s", flush=True)
        print(f"load average {os.getloadavg()}")
        base, cpu_base = min(times["floor (load+tile+save)"]), min(cpu["floor (load+tile+save)"])
        for name, ts in times.items():
            print(
                f"{name:26s} min {min(ts):6.2f}s  mean {sum(ts) / len(ts):6.2f}s  min/floor {min(ts) / base:.2f}"
                f"  |  cpu min {min(cpu[name]):6.2f}s  min/floor {min(cpu[name]) / cpu_base:.2f}"
            )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
