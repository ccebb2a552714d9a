"""Model cards for models made with hf-salt (SALT, SALT_DS, distilling step-by-step, HyperCloning).

TRL's `generate_model_card` renders only templates inside the `trl` package (and cites TRL), so hf-salt follows
its recipe rather than calling it: the trainers carry `_tag_names` / `_paper` / `_template_file` like TRL's,
`huggingface_hub`'s `ModelCardData` + `ModelCard.from_template` render `model_cards/hf_salt_model_card.md`
(shipped as `hf_salt/assets/model_cards/`; a test keeps the two identical), and this module only gathers the
data the template shows: the method and its settings (`METHODS`), the model, and, when a trainer made it, the
hyperparameters and metrics from `trainer.state.log_history`.

`method_info` keys that the card knows (others are listed under "Other method settings"):

- salt: `teacher`, `kd_steps` (n_KD), `kd_schedule`, `kd_auto_switch`, `kd_weight` (omega), `kd_temperature` (tau),
  `divergence`, `teacher_policy`
- salt_ds: `pool_size`, `selected_size`, `top_k`, `statistic`, `band`
- step_by_step: `dataset`, `rationale_source`, `rationale_weight` (lambda), `use_llm_labels`, `label_prefix`,
  `rationale_prefix`
- hypercloning: `grown_from`, `width_multiplier`, `ffn_multiplier`, `snr_db`, `depth_multiplier`, `verified`,
  `probe_max_logit_diff`; read from `config.hypercloning` (written by `hf_salt.hypercloning`) of a grown model

A teacher / grown-from value may be a string or a model (its `name_or_path` and size are recorded); a local
folder is shown as one, never as something that reads like a Hub id.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from huggingface_hub import ModelCard, ModelCardData

from hf_salt.io import write_text_atomic

TEMPLATE_PATH = Path(__file__).resolve().parent / "assets" / "model_cards" / "hf_salt_model_card.md"
BASE_TAG = "hf-salt"


@dataclass(frozen=True)
class MethodSpec:
    """What the card says about one method: its paper, tags and the `method_info` fields it records."""

    title: str
    description: str
    paper_title: str
    paper_url: str
    tags: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]  # (method_info key, label in the card)
    bibtex: str
    aliases: dict[str, str] = field(default_factory=dict)  # alternative key -> canonical key


_SALT_BIBTEX = """@article{rawat2024little,
  title   = {A Little Help Goes a Long Way: Efficient {LLM} Training by Leveraging Small {LMs}},
  author  = {Rawat, Ankit Singh and Sadhanala, Veeranjaneyulu and Rostamizadeh, Afshin and Chakrabarti, Ayan
             and Jitkrittum, Wittawat and Feinberg, Vladimir and Kim, Seungyeon and Harutyunyan, Hrayr
             and Saunshi, Nikunj and Nado, Zachary and Shivanna, Rakesh and Reddi, Sashank J.
             and Menon, Aditya Krishna and Anil, Rohan and Kumar, Sanjiv},
  journal = {arXiv preprint arXiv:2410.18779},
  year    = {2024}
}"""

_DSS_BIBTEX = """@inproceedings{hsieh2023distilling,
  title     = {Distilling Step-by-Step! Outperforming Larger Language Models with Less Training Data
               and Smaller Model Sizes},
  author    = {Hsieh, Cheng-Yu and Li, Chun-Liang and Yeh, Chih-Kuan and Nakhost, Hootan and Fujii, Yasuhisa
               and Ratner, Alexander and Krishna, Ranjay and Lee, Chen-Yu and Pfister, Tomas},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2023},
  pages     = {8003--8017},
  year      = {2023},
  note      = {arXiv:2305.02301}
}"""

_HYPERCLONING_BIBTEX = """@article{samragh2024scaling,
  title   = {Scaling Smart: Accelerating Large Language Model Pre-training with Small Model Initialization},
  author  = {Samragh, Mohammad and Mirzadeh, Iman and Alizadeh Vahid, Keivan and Faghri, Fartash
             and Cho, Minsik and Nabi, Moin and Naik, Devang and Farajtabar, Mehrdad},
  journal = {arXiv preprint arXiv:2409.12903},
  year    = {2024}
}"""

METHODS: dict[str, MethodSpec] = {
    "salt": MethodSpec(
        title="SALT: knowledge distillation from a small teacher",
        description=(
            "For the first n_KD optimizer steps the loss mixes next-token cross-entropy with a distillation "
            "term towards a *smaller* teacher (weight omega, temperature tau); afterwards it is plain "
            "cross-entropy, so the student can outgrow its teacher."
        ),
        paper_title="A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small LMs (Rawat et al., 2024)",
        paper_url="https://arxiv.org/abs/2410.18779",
        tags=("salt", "knowledge-distillation"),
        fields=(
            ("teacher", "teacher"),
            ("kd_steps", "n_KD (distillation steps)"),
            ("kd_schedule", "KD weight schedule"),
            ("kd_auto_switch", "automatic switch (kd_schedule=auto)"),
            ("kd_weight", "omega (KD weight)"),
            ("kd_temperature", "tau (temperature)"),
            ("divergence", "divergence"),
            ("teacher_policy", "teacher placement"),
        ),
        bibtex=_SALT_BIBTEX,
        aliases={
            "n_kd": "kd_steps",
            "omega": "kd_weight",
            "kd_alpha": "kd_weight",
            "tau": "kd_temperature",
            "temperature": "kd_temperature",
            "teacher_model": "teacher",
        },
    ),
    "salt_ds": MethodSpec(
        title="SALT_DS: teacher-scored data selection",
        description=(
            "The distillation phase trains on examples the small teacher finds informative and hard: each "
            "sequence of a candidate pool is scored from the teacher's top-k predictions, and a band of the "
            "ranking is kept."
        ),
        paper_title="A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small LMs (Rawat et al., 2024)",
        paper_url="https://arxiv.org/abs/2410.18779",
        tags=("salt-ds", "data-selection"),
        fields=(
            ("pool_size", "candidate pool size"),
            ("selected_size", "selected examples"),
            ("top_k", "top-k"),
            ("statistic", "score statistic"),
            ("band", "selection band"),
        ),
        bibtex=_SALT_BIBTEX,
    ),
    "step_by_step": MethodSpec(
        title="Distilling step-by-step",
        description=(
            "Multi-task training on a label task and a rationale task: the student learns to predict the "
            "answer and, separately, to generate the rationale an LLM wrote for it; loss = "
            "label loss + lambda * rationale loss (each task's loss averaged over its own tokens)."
        ),
        paper_title=(
            "Distilling Step-by-Step! Outperforming Larger Language Models with Less Training Data and "
            "Smaller Model Sizes (Hsieh et al., Findings of ACL 2023)"
        ),
        paper_url="https://arxiv.org/abs/2305.02301",
        tags=("distilling-step-by-step", "rationale-distillation"),
        fields=(
            ("dataset", "task data"),
            ("rationale_source", "rationales from"),
            ("rationale_weight", "lambda (rationale-task weight)"),
            ("use_llm_labels", "trained on LLM labels"),
            ("label_prefix", "label task prefix"),
            ("rationale_prefix", "rationale task prefix"),
        ),
        bibtex=_DSS_BIBTEX,
        aliases={"teacher": "rationale_source", "lambda": "rationale_weight"},
    ),
    "hypercloning": MethodSpec(
        title="HyperCloning: grown from a smaller model",
        description=(
            "The weights were initialised from a smaller trained model by HyperCloning, which widens every "
            "layer so that the large model starts out computing the same function as the small one."
        ),
        paper_title=(
            "Scaling Smart: Accelerating Large Language Model Pre-training with Small Model Initialization "
            "(Samragh et al., 2024)"
        ),
        paper_url="https://arxiv.org/abs/2409.12903",
        tags=("hypercloning",),
        fields=(
            ("grown_from", "grown from"),
            ("width_multiplier", "width multiplier"),
            ("ffn_multiplier", "FFN multiplier"),
            ("snr_db", "noise SNR (dB)"),
            ("depth_multiplier", "depth multiplier"),
            ("verified", "checked against the source"),
            ("probe_max_logit_diff", "max \\|logit difference\\| on the 2 x 8 probe tokens"),
        ),
        bibtex=_HYPERCLONING_BIBTEX,
        aliases={
            "source": "grown_from",
            "source_model": "grown_from",
            "embedding_dim_multiplier": "width_multiplier",
        },
    ),
}

# method_info keys whose value names a model or data set: a local folder is shown as one
_PATH_KEYS = {"teacher": "model", "grown_from": "model", "rationale_source": "model", "dataset": "dataset"}
# settings of options a run may not use: no row when absent, rather than "not recorded"
_ONLY_WHEN_USED = frozenset({"kd_auto_switch", "verified", "probe_max_logit_diff"})
# card key -> key of the provenance that hf_salt.hypercloning writes into config.hypercloning
_HYPERCLONING_KEYS = {
    "grown_from": "source",
    "width_multiplier": "width_multiplier",
    "ffn_multiplier": "ffn_multiplier",
    "snr_db": "snr_db",
    "depth_multiplier": "depth_multiplier",
    "verified": "verified",
    "probe_max_logit_diff": "probe_max_logit_diff",
}
# metrics logged by the hf-salt trainers, in the order the card shows them
_EXTRA_METRICS = (
    ("loss_ce", "cross-entropy part of the loss"),
    ("loss_kd", "distillation part of the loss"),
    ("kd_weight", "KD weight at the last log"),
    ("teacher_ce", "teacher cross-entropy"),
    ("loss_label", "label-task loss"),
    ("loss_rationale", "rationale-task loss"),
    ("accuracy", "label accuracy"),
    ("exact_match", "label exact match"),
)
_MAX_LOG_ROWS = 12
_FRAMEWORKS = (
    "hf-salt",
    "transformers",
    "torch",
    "accelerate",
    "datasets",
    "tokenizers",
    "peft",
    "deepspeed",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_NAMES = {
    "salt": "SALT",
    "salt_ds": "SALT_DS",
    "step_by_step": "distilling step-by-step",
    "hypercloning": "HyperCloning",
}


def parse_method(method: str) -> list[str]:
    """`"salt+salt_ds"` -> `["salt", "salt_ds"]`, rejecting unknown parts before any work is done."""
    parts = [p.strip().lower().replace("-", "_") for p in str(method).split("+") if p.strip()]
    unknown = [p for p in parts if p not in METHODS]
    if not parts or unknown:
        raise ValueError(
            f"Unknown method {method!r} for the model card: use one of {', '.join(METHODS)} or a '+'-joined "
            "combination such as 'hypercloning+salt'."
        )
    return list(dict.fromkeys(parts))


def method_tags(method: str) -> list[str]:
    """The Hub tags of a model trained with `method`: `hf-salt` plus each method's own tags."""
    tags = [BASE_TAG]
    for part in parse_method(method):
        tags += [t for t in METHODS[part].tags if t not in tags]
    return tags


def write_model_card(
    trainer: Any,
    *,
    method: str,
    method_info: dict[str, Any],
    output_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> str:
    """Render the hf-salt card of `trainer`'s model and write it to `output_dir/README.md` (default: the
    trainer's `args.output_dir`; `TrainerBase.save_model` passes a PEFT adapter folder).

    Only the main process writes (atomically: a kill mid-write leaves the old card); every process gets the text
    back. Keyword arguments are those of :func:`render_model_card`; extra ones from `Trainer.push_to_hub` are
    honoured where they mean something for the card (`language`, `license`, `finetuned_from`, `dataset`).
    """
    if output_dir is not None:  # a folder other than output_dir (an adapter folder): its quick start loads it
        kwargs.setdefault("model_path", output_dir)
    text = render_model_card(
        unwrap(trainer), method=method, method_info=method_info, trainer=trainer, **kwargs
    )
    check = getattr(trainer, "is_world_process_zero", None)
    if not callable(check) or check():
        write_text_atomic(
            Path(output_dir if output_dir is not None else trainer.args.output_dir) / "README.md", text
        )
    return text


def render_model_card(
    model: Any,
    *,
    method: str,
    method_info: dict[str, Any],
    trainer: Any = None,
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    model_path: str | os.PathLike | None = None,
    has_tokenizer: bool | None = None,
    template_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> str:
    """The card text of `model` (a grown model needs no trainer: `hf-salt grow` writes its card from this).

    `model_path`: the folder the quick start loads when there is no `hub_model_id` (default: the output folder),
    so its code runs as printed. `has_tokenizer`: whether the quick start loads a tokenizer (default: whether the
    trainer has one). `template_path` swaps the Jinja template, like TRL's `_template_file`.
    """
    methods = parse_method(method)
    info: dict[str, Any] = {}
    for key, value in (method_info or {}).items():  # aliases (omega, tau, n_kd, ...): the first spelling wins
        canonical = next((METHODS[m].aliases[key] for m in methods if key in METHODS[m].aliases), key)
        info.setdefault(canonical, value)
    base = model.get_base_model() if model is not None and is_peft_model(model) else model
    config = getattr(base, "config", None)
    grown = getattr(config, "hypercloning", None)
    grown = grown if isinstance(grown, dict) else {}
    if grown:  # a HyperCloned model says so in its config: recorded whichever trainer trained it
        methods = methods if "hypercloning" in methods else ["hypercloning", *methods]
        for key, source_key in _HYPERCLONING_KEYS.items():
            if info.get(key) is None and source_key in grown:
                info[key] = grown[source_key]
        if "snr_db" in grown and grown["snr_db"] is None:  # recorded as "no noise", not unknown
            info["snr_db"] = "none (an exact copy of the source's function)"
    if "step_by_step" in methods and info.get("dataset") is None and isinstance(dataset_name, str):
        info["dataset"] = dataset_name

    args = getattr(trainer, "args", None)
    hub_id = getattr(args, "hub_model_id", None)
    out = model_path or getattr(args, "output_dir", None) or "."
    model_name = model_name or (hub_id or Path(out).absolute().name).split("/")[-1]
    peft = _peft_info(model)
    all_tags = list(
        dict.fromkeys([*method_tags("+".join(methods)), *([tags] if isinstance(tags, str) else tags or [])])
    )
    datasets = kwargs.get("dataset") or dataset_name
    datasets = [
        d for d in ([datasets] if isinstance(datasets, str) else datasets or []) if not _is_local(str(d))
    ]
    base_model = (
        _hub_id(kwargs.get("finetuned_from"))
        or _hub_id(peft.get("base"))
        or _hub_id(grown.get("source"))
        # a grown model's own name is made up ("<source>-hypercloned-2x"): never a Hub repo to point at
        or (None if grown else _hub_id(getattr(config, "_name_or_path", None)))
    )
    is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    card_data = ModelCardData(
        model_name=model_name,
        language=kwargs.get("language"),
        license=kwargs.get("license"),
        library_name="peft" if peft else "transformers",
        pipeline_tag="text2text-generation" if is_seq2seq else "text-generation",
        tags=all_tags,
        datasets=datasets or None,
        base_model=base_model,
    )
    sections, used = [], set()
    for name in methods:
        spec = METHODS[name]
        rows = [(label, _fmt(info.get(key), _PATH_KEYS.get(key))) for key, label in spec.fields
                if info.get(key) is not None or key not in _ONLY_WHEN_USED]  # fmt: skip
        used.update(key for key, _ in spec.fields)
        sections.append({**vars(spec), "rows": rows})
    how = f"{'trained' if trainer is not None else 'made'} with {' + '.join(_NAMES[m] for m in methods)}"
    summary = f"A `{type(base).__name__}` {how} using hf-salt, a Transformers plugin."
    if "salt" in methods and info.get("teacher") is not None:
        summary += f" Its (smaller) teacher: {_fmt(info['teacher'], 'model')}."
    if "hypercloning" in methods and info.get("grown_from") is not None:
        summary += f" Grown from: {_fmt(info['grown_from'], 'model')}."
    log_history = trainer.state.log_history if trainer is not None else None
    if has_tokenizer is None:
        has_tokenizer = getattr(trainer, "processing_class", None) is not None
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path or TEMPLATE_PATH),
        model_name=model_name,
        summary=summary,
        peft=peft,
        adapter_base=_local_or_hub(peft["base"]) if peft.get("base") else "its base model",
        auto_class="AutoModelForSeq2SeqLM" if is_seq2seq else "AutoModelForCausalLM",
        load_path=hub_id or os.fspath(out),
        has_tokenizer=has_tokenizer,
        trained=trainer is not None,
        methods=sections,
        other_settings=[(k, _fmt(v, _PATH_KEYS.get(k))) for k, v in info.items() if k not in used],
        model_rows=_model_rows(model, base, peft),
        hyperparameters=_hyperparameters(trainer) if trainer is not None else [],
        metrics=_metrics(log_history) if log_history is not None else [],
        log_table=_log_table(log_history or []),
        tracking=", ".join(r for r in (getattr(args, "report_to", None) or []) if r != "none"),
        framework_versions=[(n, v) for n in _FRAMEWORKS if (v := _version(n)) is not None],
        citations=list(dict.fromkeys(METHODS[m].bibtex for m in methods)),
        hf_salt_version=_version("hf-salt"),
    )
    return re.sub(r"\n{3,}", "\n\n", str(card))  # Jinja blocks leave runs of blank lines


# --------------------------------------------------------------------------- the data the template shows
def unwrap(trainer: Any) -> Any:
    """The trainer's model without its accelerate / DDP / DeepSpeed wrapper (a PEFT wrapper stays)."""
    model = getattr(trainer, "model", None)
    accelerator = getattr(trainer, "accelerator", None)
    return accelerator.unwrap_model(model) if accelerator is not None and model is not None else model


def _fmt(value: Any, kind: str | None = None) -> str:
    """One table cell: models become `name (N params)`, floats are short, missing values say so.

    `kind` ("model", "dataset"): the value names a model or data set, so a local path is shown as one.
    """
    if value is None:
        return "not recorded"
    if hasattr(value, "config") and hasattr(value, "parameters"):
        name = getattr(value, "name_or_path", "") or getattr(value.config, "_name_or_path", "") or ""
        label = _local_or_hub(str(name)) if name else f"a `{type(value).__name__}`"
        return f"{label} ({_count(sum(p.numel() for p in value.parameters()))} parameters)"
    if kind and isinstance(value, (str, os.PathLike)) and _is_local(os.fspath(value)):
        return _local_or_hub(os.fspath(value), kind)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text != text.strip() else text  # keep meaningful spaces (task prefixes) visible


def _is_local(name: str) -> bool:
    """A local folder (or a path that cannot be a Hub repo id), not `org/name` on the Hub."""
    from hf_salt.checks import looks_like_local_path

    return os.path.exists(name) or looks_like_local_path(name)


def _local_or_hub(name: str, kind: str = "model") -> str:
    """`org/name` for a Hub id; "a local model (`teacher/model`)" for a folder (its last parts, no home paths)."""
    if not _is_local(name):
        return f"`{name}`"
    parts = Path(name).expanduser().absolute().parts
    shown = "/".join(parts[-2:]) if parts[-1] in ("model", "final", "best") and len(parts) > 2 else parts[-1]
    return f"a local {kind} (`{shown}`)"


def _hub_id(name: Any) -> str | None:
    """Only Hub repo ids go into `base_model` (a local folder would make the Hub metadata invalid)."""
    ok = isinstance(name, str) and bool(_HUB_ID.match(name)) and not _is_local(name)
    return name if ok else None


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _peft_info(model: Any) -> dict[str, str]:
    """The active adapter's type and base model of a PEFT model, else {}."""
    if model is None or not is_peft_model(model):
        return {}
    config = model.active_peft_config
    base = config.base_model_name_or_path or model.get_base_model().config._name_or_path
    return {"type": str(getattr(config.peft_type, "value", config.peft_type)), "base": str(base or "")}


def _model_rows(model: Any, base: Any, peft: dict[str, str]) -> list[tuple[str, str]]:
    if model is None:
        return []
    adapter = f" + {peft['type']} adapter" if peft else ""
    total, trainable = model.num_parameters(), model.num_parameters(only_trainable=True)
    rows = [("architecture", f"`{type(base).__name__}`{adapter}"), ("parameters", _count(total))]
    if trainable != total:
        rows.append(("trainable parameters", _count(trainable)))
    keys = (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    )
    return rows + [(k, _fmt(v)) for k in keys if (v := getattr(base.config, k, None)) is not None]


def _hyperparameters(trainer: Any) -> list[tuple[str, str]]:
    args, state = trainer.args, trainer.state
    world = int(getattr(args, "world_size", 1) or 1)
    accelerator = trainer.accelerator
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    kind = {"NO": "single process", "MULTI_CPU": "DDP (CPU)", "MULTI_GPU": "DDP"}.get(kind, kind)
    if trainer.is_deepspeed_enabled:
        stage = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage")
        kind = "DeepSpeed" if stage is None else f"DeepSpeed ZeRO-{stage}"
    elif trainer.is_fsdp_enabled:
        kind = f"FSDP{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', '')}"
    processes = accelerator.num_processes
    rows = [
        ("learning_rate", _fmt(args.learning_rate)),
        ("per_device_train_batch_size", str(args.per_device_train_batch_size)),
        ("gradient_accumulation_steps", str(args.gradient_accumulation_steps)),
        ("processes", str(world)),
        (
            "total_train_batch_size",
            str(args.per_device_train_batch_size * args.gradient_accumulation_steps * world),
        ),
        ("optimizer", str(getattr(args.optim, "value", args.optim))),
        ("lr_scheduler_type", str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))),
        ("warmup_steps", _fmt(args.warmup_steps)),
        ("weight_decay", _fmt(args.weight_decay)),
        ("max_grad_norm", _fmt(args.max_grad_norm)),
        ("optimizer steps", str(state.global_step)),
        ("seed", str(args.seed)),
        ("precision", "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"),
        ("distributed", f"{kind} ({processes} processes)" if processes > 1 else kind),
    ]
    if state.num_input_tokens_seen:
        rows.append(("tokens seen", _count(int(state.num_input_tokens_seen))))
    return rows


def _last(log_history: list[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in log_history if isinstance(e.get(key), (int, float))]
    return float(values[-1]) if values else None


def _metrics(log_history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Final values from `log_history`; perplexity is exp of the cross-entropy (the SALT loss includes KD)."""
    ppl = lambda loss: f"{math.exp(loss):.4g}" if loss < 700 else "inf"  # noqa: E731
    rows: list[tuple[str, str]] = []
    train_loss, train_ce = _last(log_history, "loss"), _last(log_history, "loss_ce")
    eval_loss, eval_ce = _last(log_history, "eval_loss"), _last(log_history, "eval_loss_ce")
    if train_loss is not None:
        rows.append(("final train loss", f"{train_loss:.4f}"))
    if (mean := _last(log_history, "train_loss")) is not None:
        rows.append(("mean train loss (whole run)", f"{mean:.4f}"))
    if train_loss is not None or train_ce is not None:
        rows.append(("final train perplexity", ppl(train_ce if train_ce is not None else train_loss)))
    if eval_loss is not None:
        rows.append(("final eval loss", f"{eval_loss:.4f}"))
        rows.append(("final eval perplexity", ppl(eval_ce if eval_ce is not None else eval_loss)))
    for key, label in _EXTRA_METRICS:
        for prefix in ("", "eval_", "test_"):
            if (value := _last(log_history, prefix + key)) is not None:
                rows.append((f"{prefix}{key} ({label})", f"{value:.4g}"))
    return rows


def _log_table(log_history: list[dict[str, Any]]) -> str:
    """A short markdown table of the loss curve (train and eval by step), at most a dozen rows."""
    by_step: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if entry.get("step") is not None:
            row = by_step.setdefault(int(entry["step"]), {})
            row.update({k: float(entry[k]) for k in ("loss", "eval_loss") if k in entry})
    steps = [s for s in sorted(by_step) if by_step[s]]
    if len(steps) > _MAX_LOG_ROWS:
        steps = sorted(
            {steps[round(i * (len(steps) - 1) / (_MAX_LOG_ROWS - 1))] for i in range(_MAX_LOG_ROWS)}
        )
    columns = [k for k in ("loss", "eval_loss") if any(k in by_step[s] for s in steps)]
    if not columns:
        return ""
    names = {"loss": "train loss", "eval_loss": "eval loss"}
    lines = ["| step | " + " | ".join(names[c] for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for s in steps:
        lines.append(
            f"| {s} | "
            + " | ".join(f"{by_step[s][c]:.4f}" if c in by_step[s] else "" for c in columns)
            + " |"
        )
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    if dist == "hf-salt":
        from hf_salt import __version__

        return __version__
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
