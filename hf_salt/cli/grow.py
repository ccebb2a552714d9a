"""`hf-salt grow SRC DST`: HyperClone a causal LM into a wider (and optionally deeper) one.

SRC is a local model folder (or a hub id, or an hf-salt zoo preset); DST is written completely or not at
all, with the hf-salt model card (README.md: the source, the multipliers, the noise, the check against the
source and its logit difference, the paper). The grown model is checked against the source before anything is written: the traced forward that
chooses the layouts gives the logit difference (it runs once; nothing is re-run for the summary line).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_salt.cli.parser import Command
from hf_salt.zoo import DTYPE_CHOICES, parse_dtype


@dataclass
class GrowArguments:
    src: str = field(
        metadata={"help": "Source: a local model folder, a hub id, or an hf-salt zoo preset name."}
    )
    dst: str = field(metadata={"help": "Output folder for the grown model (must not exist or be empty)."})
    width_multiplier: int = field(
        default=2, metadata={"help": "Hidden size and attention heads grow by this integer."}
    )
    ffn_multiplier: int | None = field(
        default=None, metadata={"help": "MLP width grows by this integer (default: the width multiplier)."}
    )
    snr_db: float = field(
        default=0.0,
        metadata={
            "help": "Function-preserving noise at this signal-to-noise ratio in dB (>= -10), so training can "
            "separate the clone's copies. 0 dB is the recipe: -3 and -6 dB gained only 0.02 of the steps in the "
            "payoff benchmark and bring a bf16 clone closer to failing its check (docs/hypercloning.md, "
            "'Training a clone')."
        },
    )
    no_noise: bool = field(
        default=False,
        metadata={
            "help": "No noise: an exact copy whose copies stay identical under training (to inspect the clone, or "
            "for a model trained with dropout). Replaces --snr_db."
        },
    )
    depth_multiplier: int = field(
        default=1, metadata={"help": "Layers grow by this integer; new blocks start as exact identities."}
    )
    depth_mode: str = field(
        default="interleave",
        metadata={
            "help": "Where new blocks go: interleave (after each block) or append (on top).",
            "choices": ["interleave", "append"],
        },
    )
    untie_word_embeddings: bool = field(
        default=False,
        metadata={"help": "Give the grown model its own output head even if the source ties it."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype of the grown model: auto (the source's), float32, bfloat16, float16.",
            "choices": list(DTYPE_CHOICES),
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the symmetry-breaking noise."})
    verify: bool = field(
        default=True,
        metadata={
            "help": "Refuse a clone that differs from the source (--no_verify only skips the re-check after the "
            "noise where the layouts needed a search; they are chosen by the same traced forwards either way, so "
            "the clone is the same)."
        },
    )
    tolerance: float = field(
        default=1e-4,
        metadata={
            "help": "Largest logit difference accepted in float32 (other dtypes are reported, not checked)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace DST if it exists."})

    def __post_init__(self) -> None:
        from hf_salt.checks import check_model_path, check_writable
        from hf_salt.hypercloning.validation import check_grow_args

        if self.no_noise:
            if self.snr_db != GrowArguments.snr_db:
                raise ValueError(
                    f"--no_noise adds no noise, --snr_db {self.snr_db:g} does: pass one of them."
                )
            self.snr_db = None  # type: ignore[assignment]
        try:
            check_grow_args(
                self.width_multiplier,
                self.ffn_multiplier,
                self.depth_multiplier,
                self.snr_db,
                self.depth_mode,
                self.tolerance,
            )
        except ValueError as err:  # the API's messages, with the flag spelling of the command line
            raise ValueError(
                "--" + str(err).replace("_", "-", 1) if str(err)[:1].islower() else str(err)
            ) from err
        parse_dtype(self.dtype, "--dtype")
        if not self._is_preset():
            check_model_path(self.src, "SRC")
        check_writable(
            self.dst, "DST", overwrite=self.overwrite, overwrite_flag="--overwrite"
        )  # before any work

    def _is_preset(self) -> bool:
        if Path(self.src).exists():
            return False
        try:
            from hf_salt import zoo
        except ImportError:
            return False
        return self.src in zoo.PRESETS


def _load_source(src: str) -> tuple[Any, Any]:
    """Model and (if any) tokenizer: a folder or hub id via the Auto classes, else a zoo preset."""
    from transformers import AutoTokenizer

    from hf_salt.hypercloning.core import load_source

    if not Path(src).exists():
        try:
            from hf_salt import zoo
        except ImportError:
            zoo = None  # type: ignore[assignment]
        if zoo is not None and src in zoo.PRESETS:
            return zoo.load_model(src, seed=0, attn_implementation="eager"), None
    model = load_source(src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception:  # a model folder without tokenizer files is fine
        tokenizer = None
    return model, tokenizer


def run(args: GrowArguments) -> int:
    from hf_salt.checks import check_causal_lm, check_finite
    from hf_salt.hypercloning import UnverifiedCloneWarning, clone, save_pretrained_atomic
    from hf_salt.model_card import render_model_card

    model, tokenizer = _load_source(args.src)
    check_causal_lm(model, f"SRC {args.src!r}")  # an encoder (BERT) folder without `architectures` loads too
    check_finite(model, f"SRC {args.src!r}")  # a NaN source would give a NaN clone that "verifies"
    model.eval()
    exact_dtype = next(model.parameters()).dtype == torch.float32
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnverifiedCloneWarning)  # --no_verify never writes a wrong clone
            grown = clone(
                model,
                args.width_multiplier,
                args.ffn_multiplier,
                args.snr_db,
                tie_word_embeddings=False if args.untie_word_embeddings else None,
                dtype=args.dtype,  # auto: the source's
                depth_multiplier=args.depth_multiplier,
                depth_mode=args.depth_mode,  # type: ignore[arg-type]
                seed=args.seed,
                progress=True,
                verify=args.verify,
                tolerance=args.tolerance if exact_dtype else None,
            )
    except (ValueError, NotImplementedError, UnverifiedCloneWarning) as err:
        print(f"hf-salt grow: error: {err}", file=sys.stderr)
        return 2
    n_src, n_dst = model.num_parameters(), grown.num_parameters()
    summary = f"{type(grown).__name__}: {n_src / 1e6:.2f}M -> {n_dst / 1e6:.2f}M parameters"
    diff = grown.config.hypercloning.get("probe_max_logit_diff")
    if diff is not None:  # measured by the engine's traced forward, in the source's dtype (before any cast)
        src_dtype = str(next(model.parameters()).dtype).split(".")[-1]
        summary += f"; verify: max |logit difference| = {diff:.2e} on the 2x8 probe tokens ({src_dtype})"
        if exact_dtype and diff > args.tolerance:
            print(f"{summary} > tolerance {args.tolerance:g}: NOT written.", file=sys.stderr)
            return 1
        summary += ", OK" if exact_dtype else ", reported (only float32 is checked)"
    # the hf-salt card (source, multipliers, noise, the check): saved with the weights, or nothing is;
    # a preset's clone records only its class as the source, so the card names the preset
    preset = {"grown_from": f"the hf-salt zoo preset {args.src} (seed 0)"}
    card = render_model_card(
        grown,
        method="hypercloning",
        method_info=preset if args._is_preset() else {},
        model_name=Path(args.dst).absolute().name,
        model_path=args.dst,
        has_tokenizer=tokenizer is not None,
    )
    save_pretrained_atomic(
        grown, args.dst, tokenizer=tokenizer, overwrite=args.overwrite, files={"README.md": card}
    )
    print(f"{summary}; saved to {args.dst}")
    return 0


class _GrowCommand(Command):
    """Accepts `SRC DST` positionally as well as `--src/--dst`."""

    def main(self, argv: Sequence[str], prog: str | None = None) -> int:
        argv = list(argv)
        positional: list[str] = []
        while argv and not argv[0].startswith("-") and len(positional) < 2:
            positional.append(argv.pop(0))
        flags = [f"--{name}" for name in ("src", "dst")[: len(positional)]]
        return super().main([x for pair in zip(flags, positional) for x in pair] + argv, prog=prog)


COMMAND = _GrowCommand([GrowArguments], run, description=__doc__, output_option="dst")
