"""Named size presets that build ordinary, randomly initialised Hugging Face models.

A preset is a plain config recipe: `build_config("llama-small")` returns a `LlamaConfig`, so models built
here save with `save_pretrained` and load back with the Auto classes, without hf-salt. Width presets come
in families (`llama-small`, `llama-small-2x`, `llama-small-4x`) whose head size and depth match, so a
trained small model can be grown into the wider one with HyperCloning.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
)

# Token ids of the shipped tokenizer (hf_salt/assets/tokenizer): <|endoftext|> = 0, <|pad|> = 1.
DEFAULT_VOCAB_SIZE = 8192
EOS_ID, PAD_ID = 0, 1


@dataclass(frozen=True)
class Preset:
    """A model type plus config keyword arguments; `seq2seq` picks the Auto class."""

    model_type: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seq2seq: bool = False
    description: str = ""


def _llama(
    hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, ctx: int = 2048, desc: str = ""
) -> Preset:
    return Preset(
        "llama",
        dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=hidden // heads,
            intermediate_size=ffn,
            max_position_embeddings=ctx,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=True,
        ),
        description=desc,
    )


PRESETS: dict[str, Preset] = {
    # tests: trains in seconds on a CPU
    "llama-tiny": _llama(32, 2, 4, 2, 64, ctx=256, desc="tests; ~0.3M params at vocab 8192"),
    "llama-tiny-2x": _llama(64, 2, 8, 4, 128, ctx=256, desc="2x-wide llama-tiny (HyperCloning target)"),
    # CPU demo: teacher and its 2x / 4x-wide students (same depth and head size)
    "llama-small": _llama(128, 4, 4, 2, 352, ctx=1024, desc="CPU demo teacher; ~1.8M params"),
    "llama-small-2x": _llama(
        256, 4, 8, 4, 704, ctx=1024, desc="CPU demo student, 2x llama-small; ~5M params"
    ),
    "llama-small-4x": _llama(512, 4, 16, 8, 1408, ctx=1024, desc="4x llama-small; ~17M params"),
    # CPU reproduction with a small vocabulary (benchmarks/configs/cpu_small_vocab.yaml): trained long, in one epoch
    "llama-micro": _llama(64, 4, 4, 2, 128, ctx=512, desc="CPU teacher; ~0.15M non-embedding params"),
    "llama-micro-2x": _llama(
        128, 4, 8, 4, 256, ctx=512, desc="2x-wide llama-micro; ~0.59M non-embedding params"
    ),
    # GPU scale
    "llama-40m": _llama(512, 12, 8, 4, 1408, desc="GPU teacher; ~42M params"),
    "llama-160m": _llama(1024, 12, 16, 8, 2816, desc="GPU student, 2x llama-40m; ~160M params"),
    "llama-1b": _llama(2048, 22, 32, 8, 5632, desc="~1B params (TinyLlama shape)"),
    # other causal families
    "gpt2-tiny": Preset(
        "gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_positions=256, n_inner=128), description="tests"
    ),
    "gpt2-small": Preset(
        "gpt2", dict(n_embd=128, n_layer=4, n_head=4, n_positions=1024, n_inner=512), description="CPU"
    ),
    "gptneox-tiny": Preset(
        "gpt_neox",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            rotary_pct=0.25,
            max_position_embeddings=256,
            tie_word_embeddings=False,
        ),
        description="tests (Pythia layout)",
    ),
    "gptneox-small": Preset(
        "gpt_neox",
        dict(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            rotary_pct=0.25,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
        ),
        description="CPU (Pythia layout)",
    ),
    # seq2seq (distilling step-by-step)
    "t5-tiny": Preset(
        "t5",
        dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0),
        seq2seq=True,
        description="tests",
    ),
    "t5-small": Preset(
        "t5",
        dict(
            d_model=128, d_kv=32, d_ff=512, num_layers=4, num_decoder_layers=4, num_heads=4, dropout_rate=0.1
        ),
        seq2seq=True,
        description="CPU step-by-step; ~2.5M params + embeddings",
    ),
    "t5-base-like": Preset(
        "t5",
        dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12),
        seq2seq=True,
        description="GPU step-by-step (T5-v1.1-base shape)",
    ),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name, suggesting the closest names on a typo."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model preset {name!r}.{hint} Available presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


def build_config(preset: str, vocab_size: int | None = None, **overrides: Any) -> PretrainedConfig:
    """Return the plain HF config of a preset; `overrides` replace any config field."""
    spec = get_preset(preset)
    kwargs = dict(spec.kwargs)
    kwargs.update(
        vocab_size=vocab_size or DEFAULT_VOCAB_SIZE,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if spec.seq2seq:
        kwargs["decoder_start_token_id"] = PAD_ID
    kwargs.update(overrides)
    return AutoConfig.for_model(spec.model_type, **kwargs)


def build_model(
    preset: str,
    vocab_size: int | None = None,
    seed: int | None = None,
    attn_implementation: str | None = "sdpa",
    **overrides: Any,
) -> PreTrainedModel:
    """Build a randomly initialised model from a preset (fp32). `seed` makes the init reproducible."""
    config = build_config(preset, vocab_size, **overrides)
    auto = AutoModelForSeq2SeqLM if get_preset(preset).seq2seq else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return auto.from_config(config, attn_implementation=attn_implementation)


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_CHOICES = ("auto", *DTYPES)


def parse_dtype(value: str | torch.dtype | None, what: str = "dtype") -> torch.dtype | str | None:
    """A dtype given as text (CLI flags, JSON init kwargs) -> ``torch.dtype``; ``"auto"`` (the checkpoint's
    dtype, as ``from_pretrained`` reads it), None and ``torch.dtype`` pass through."""
    if value is None or value == "auto" or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPE_CHOICES)}, got {value!r}.")
    return DTYPES[name]


def load_model(
    name_or_path: str,
    *,
    vocab_size: int | None = None,
    seed: int | None = 0,
    dtype: str | torch.dtype | None = None,
    flag: str = "--model",
    local_files_only: bool = True,
    causal: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """A zoo preset (random init from ``seed``) or a model folder, loaded with the Auto class its config names
    (seq2seq or causal LM). ``vocab_size`` is the tokenizer's: a preset gets that many rows, a folder whose
    embeddings are smaller is refused. ``flag`` names the option in errors. Never downloads unless
    ``local_files_only=False`` (then a Hub id works too). ``causal``: refuse anything but a decoder-only causal
    LM in one line. A truncated or corrupt weights file is named in the error."""
    from hf_salt.checks import check_causal_lm, check_model_path, naming_corrupt_files

    torch_dtype = parse_dtype(dtype, flag.lstrip("-") + " dtype")
    if name_or_path in PRESETS:
        model = build_model(name_or_path, vocab_size=vocab_size, seed=seed, **kwargs)
        return model.to(torch_dtype) if isinstance(torch_dtype, torch.dtype) else model
    if local_files_only and not Path(name_or_path).is_dir():
        raise ValueError(
            f"{flag} {name_or_path!r} is neither a zoo preset ({', '.join(PRESETS)}) nor a local model folder."
        )
    check_model_path(name_or_path, flag)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    with naming_corrupt_files(name_or_path, flag):
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
        if causal or not getattr(config, "is_encoder_decoder", False):  # loaded as a causal LM below
            check_causal_lm(config, f"{flag} {name_or_path!r}")
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        try:
            model = auto.from_pretrained(name_or_path, local_files_only=local_files_only, **kwargs)
        except TypeError as err:  # an option neither from_pretrained, the config nor the model class takes
            unknown = re.search(r"unexpected keyword argument '([^']+)'", str(err))
            if not unknown or unknown.group(1) not in kwargs:
                raise
            raise ValueError(
                f"{flag} {name_or_path!r}: {unknown.group(1)!r} is not an option of from_pretrained, of "
                f"{type(config).__name__} or of the model class ({err}). Remove it from the loading options (for a "
                "teacher: --teacher_model_init_kwargs / SALTConfig.teacher_model_init_kwargs, which take "
                "from_pretrained options such as dtype or attn_implementation, and config fields)."
            ) from None
    rows = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and rows < vocab_size:
        raise ValueError(
            f"The model at {name_or_path!r} has {rows} embeddings but the tokenizer has {vocab_size} tokens: "
            "use the model's own tokenizer (--tokenizer)."
        )
    return model
