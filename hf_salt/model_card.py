"""Model cards for models trained with hf-salt (SALT, SALT_DS, distilling step-by-step, HyperCloning).

Trainers call `write_model_card` from their `create_model_card` override, so `trainer.push_to_hub()` uploads
a card that says how the model was made: the method and its settings (teacher, n_KD, schedule, omega,
tau, divergence, data selection, grown-from source), the training metrics from `trainer.state.log_history`,
framework versions, a quick start that loads with plain transformers, and the papers' BibTeX.

`method_info` keys that the card knows (others are listed under "Other method settings"):

- salt: `teacher`, `kd_steps` (n_KD), `kd_schedule`, `kd_auto_switch`, `kd_weight` (omega), `kd_temperature` (tau),
  `divergence`, `teacher_policy`
- salt_ds: `pool_size`, `selected_size`, `top_k`, `statistic`, `band`
- step_by_step: `dataset`, `rationale_source`, `rationale_weight` (lambda), `use_llm_labels`, `label_prefix`,
  `rationale_prefix`
- hypercloning: `grown_from`, `width_multiplier`, `ffn_multiplier`, `snr_db`, `depth_multiplier`; read
  from `config.hypercloning` (written by `hf_salt.hypercloning`) when the trained model was grown

A teacher / grown-from value may be a string or a model (its `name_or_path` and size are recorded).
The template lives in the top-level `model_cards/` folder; a copy ships in `hf_salt/assets/model_cards/`
(a test keeps the two identical).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import is_peft_model
from huggingface_hub import ModelCard, ModelCardData

from hf_salt.io import write_text_atomic

logger = logging.getLogger(__name__)

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
        ),
        bibtex=_HYPERCLONING_BIBTEX,
        aliases={
            "source": "grown_from",
            "source_model": "grown_from",
            "embedding_dim_multiplier": "width_multiplier",
        },
    ),
}

# metrics logged by the hf-salt trainers, in the order the card shows them
_EXTRA_METRICS: tuple[tuple[str, str], ...] = (
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
_FRAMEWORKS = ("transformers", "torch", "accelerate", "datasets", "tokenizers", "peft", "deepspeed")


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
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    output_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> str:
    """Render the hf-salt model card for `trainer` and write it to `output_dir/README.md` (default: the
    trainer's `args.output_dir`; `SALTTrainer.save_model` passes a PEFT adapter folder).

    Only the main process writes (atomically: a temporary file, then `os.replace`), so a reader never sees
    half a card; every process gets the text back. Extra keyword arguments from `Trainer.push_to_hub`
    (`language`, `license`, `finetuned_from`, `dataset`, `tasks`, ...) are honoured where they mean something
    for the card and otherwise ignored, as `push_to_hub` forwards anything it is given. `template_path`
    swaps the Jinja template (like TRL's `_template_file`). `model_path`: the folder the model is saved in, named
    by the quick start when there is no `hub_model_id` (default: `output_dir`), so its code runs as printed.
    """
    methods = parse_method(method)
    info = _canonical_info(methods, dict(method_info or {}))
    grown = _hypercloning_provenance(_unwrap(trainer))
    if grown:  # a HyperCloned model says so in its config: record it whichever trainer trained it
        if "hypercloning" not in methods:
            methods.insert(0, "hypercloning")
        for key, source_key in _HYPERCLONING_KEYS:
            if info.get(key) is None and source_key in grown:
                info[key] = grown[source_key]
        if "snr_db" in grown and grown["snr_db"] is None:  # recorded as "no noise", not unknown
            info["snr_db"] = "none (an exact copy of the source's function)"
    if "step_by_step" in methods and info.get("dataset") is None and isinstance(dataset_name, str):
        info["dataset"] = dataset_name
    text = render_model_card(
        trainer,
        methods=methods,
        info=info,
        model_name=model_name,
        dataset_name=dataset_name,
        tags=tags,
        **kwargs,
    )
    if _is_main_process(trainer):
        output_dir = Path(output_dir if output_dir is not None else trainer.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / "README.md", text)
    return text


def render_model_card(
    trainer: Any,
    *,
    methods: list[str],
    info: dict[str, Any],
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    template_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> str:
    """Build the card text without writing it (used by `write_model_card`; handy for previews)."""
    args = trainer.args
    model = _unwrap(trainer)
    peft_info = _peft_info(model)
    repo_id = args.hub_model_id or model_name or Path(args.output_dir).name
    model_name = model_name or repo_id.split("/")[-1]

    all_tags = method_tags("+".join(methods))
    for tag in [tags] if isinstance(tags, str) else list(tags or []):
        if tag not in all_tags:
            all_tags.append(tag)
    datasets = kwargs.get("dataset") or dataset_name
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    datasets = [d for d in datasets if not _is_local(str(d))]  # a local file is no Hub data set
    grown = _hypercloning_provenance(model)
    base_model = (
        _hub_id(kwargs.get("finetuned_from"))
        or _hub_id(peft_info.get("base"))
        or _hub_id(grown.get("source"))
        # a grown model's own name is made up ("<source>-hypercloned-2x"): never a Hub repo to point at
        or (None if grown else _hub_id(getattr(getattr(model, "config", None), "_name_or_path", None)))
    )
    is_seq2seq = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    card_data = ModelCardData(
        model_name=model_name,
        language=kwargs.get("language"),
        license=kwargs.get("license"),
        library_name="peft" if peft_info else "transformers",
        pipeline_tag="text2text-generation" if is_seq2seq else "text-generation",
        tags=all_tags,
        datasets=datasets or None,
        base_model=base_model,
    )

    method_sections, other = _method_sections(methods, info)
    template = Path(template_path) if template_path is not None else TEMPLATE_PATH
    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        summary=_summary(methods, info, model),
        is_adapter=bool(peft_info),
        peft_type=peft_info.get("type", ""),
        adapter_base=_model_name(peft_info["base"]) if peft_info.get("base") else "its base model",
        quickstart=_quickstart(
            args.hub_model_id or kwargs.get("model_path") or args.output_dir,
            is_seq2seq,
            bool(peft_info),
            trainer,
        ),
        methods=method_sections,
        other_settings=other,
        model_rows=_model_rows(model, peft_info),
        hyperparameters=_hyperparameters(trainer),
        metrics=_metrics(trainer.state.log_history),
        log_table=_log_table(trainer.state.log_history),
        tracking=", ".join(r for r in (args.report_to or []) if r != "none"),
        framework_versions=_framework_versions(),
        citations=list(dict.fromkeys(METHODS[m].bibtex for m in methods)),
        hf_salt_version=_hf_salt_version(),
    )
    return re.sub(r"\n{3,}", "\n\n", str(card))  # Jinja blocks leave runs of blank lines


# --------------------------------------------------------------------------- helpers
# card key -> key of the provenance that hf_salt.hypercloning writes into config.hypercloning
_HYPERCLONING_KEYS = (
    ("grown_from", "source"),
    ("width_multiplier", "width_multiplier"),
    ("ffn_multiplier", "ffn_multiplier"),
    ("snr_db", "snr_db"),
    ("depth_multiplier", "depth_multiplier"),
)


def _hypercloning_provenance(model: Any) -> dict[str, Any]:
    """`config.hypercloning` of a grown model (also under a PEFT wrapper), else {}."""
    if model is not None and is_peft_model(model):
        model = model.get_base_model()
    grown = getattr(getattr(model, "config", None), "hypercloning", None)
    return grown if isinstance(grown, dict) else {}


def _canonical_info(methods: list[str], info: dict[str, Any]) -> dict[str, Any]:
    """Map aliases (`omega`, `tau`, `n_kd`, ...) to the keys the card knows, first spelling wins."""
    out: dict[str, Any] = {}
    for key, value in info.items():
        canonical = key
        for m in methods:
            canonical = METHODS[m].aliases.get(key, canonical)
        out.setdefault(canonical, value)
    return out


def _method_sections(methods: list[str], info: dict[str, Any]) -> tuple[list[dict[str, Any]], list]:
    sections, used = [], set()
    for name in methods:
        spec = METHODS[name]
        rows = []
        for key, label in spec.fields:
            used.add(key)
            if info.get(key) is None and key in _ONLY_WHEN_USED:
                continue  # a setting of an option the run did not use: no row, rather than "not recorded"
            rows.append((label, _fmt(info.get(key), kind=_PATH_KEYS.get(key))))
        sections.append(
            {
                "title": spec.title,
                "description": spec.description,
                "paper_title": spec.paper_title,
                "paper_url": spec.paper_url,
                "rows": rows,
            }
        )
    other = [(key, _fmt(value, kind=_PATH_KEYS.get(key))) for key, value in info.items() if key not in used]
    return sections, other


def _summary(methods: list[str], info: dict[str, Any], model: Any) -> str:
    kind = _architecture(model)
    names = {
        "salt": "SALT",
        "salt_ds": "SALT_DS",
        "step_by_step": "distilling step-by-step",
        "hypercloning": "HyperCloning",
    }
    text = f"A `{kind}` trained with {' + '.join(names[m] for m in methods)} using hf-salt, a Transformers plugin."
    if "salt" in methods and info.get("teacher") is not None:
        text += f" Its (smaller) teacher: {_fmt(info['teacher'], kind='model')}."
    if "hypercloning" in methods and info.get("grown_from") is not None:
        text += f" Grown from: {_fmt(info['grown_from'], kind='model')}."
    return text


def _fmt(value: Any, kind: str | None = None) -> str:
    """One table cell: models become `name (N params)`, floats are short, missing values say so.

    `kind` ("model", "dataset"): the value names a model or data set, so a local path is shown as one rather
    than as something that reads like a Hub id.
    """
    if value is None:
        return "not recorded"
    if hasattr(value, "config") and hasattr(value, "parameters"):
        name = getattr(value, "name_or_path", "") or getattr(value.config, "_name_or_path", "") or ""
        label = _model_name(str(name)) if name else f"a `{type(value).__name__}`"
        return f"{label} ({_count(_num_parameters(value))} parameters)"
    if kind and isinstance(value, (str, os.PathLike)) and _is_local(os.fspath(value)):
        return _model_name(os.fspath(value), kind)
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


def _model_name(name: str, kind: str = "model") -> str:
    """`org/name` for a Hub id; "a local model (`teacher/model`)" for a folder (its last parts, no home paths)."""
    if not _is_local(name):
        return f"`{name}`"
    parts = Path(name).expanduser().absolute().parts
    shown = "/".join(parts[-2:]) if parts[-1] in ("model", "final", "best") and len(parts) > 2 else parts[-1]
    return f"a local {kind} (`{shown}`)"


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _unwrap(trainer: Any) -> Any:
    model = getattr(trainer, "model", None)
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None and model is not None:
        try:
            return accelerator.unwrap_model(model)
        except Exception:  # noqa: BLE001 - an odd wrapper must not stop the card
            return model
    return model


def _peft_info(model: Any) -> dict[str, str]:
    configs = model.peft_config if model is not None and is_peft_model(model) else None
    if not configs:
        return {}
    config = configs.get(getattr(model, "active_adapter", "default")) or next(iter(configs.values()))
    peft_type = getattr(config, "peft_type", "")
    base = getattr(config, "base_model_name_or_path", None)
    base = base or getattr(model.get_base_model().config, "_name_or_path", "") or ""
    return {"type": str(getattr(peft_type, "value", peft_type)), "base": str(base)}


# keys whose value names a model: local folders are rendered as such
_PATH_KEYS = {"teacher": "model", "grown_from": "model", "rationale_source": "model", "dataset": "dataset"}
# fields of options a run may not use: left out of the card when absent (kd_auto_switch only with kd_schedule=auto)
_ONLY_WHEN_USED = frozenset({"kd_auto_switch"})

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _num_parameters(model: Any, only_trainable: bool = False) -> int:
    """HF's `num_parameters()` (PEFT models forward it to the wrapped model); plain modules are summed."""
    if callable(getattr(model, "num_parameters", None)):
        return int(model.num_parameters(only_trainable=only_trainable))
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not only_trainable)


def _hub_id(name: Any) -> str | None:
    """Only Hub repo ids go into `base_model` (a local folder would make the Hub metadata invalid)."""
    if not isinstance(name, str) or not name or _is_local(name) or not _HUB_ID.match(name):
        return None
    return name


def _quickstart(repo_id: str, is_seq2seq: bool, is_adapter: bool, trainer: Any) -> str:
    auto = "AutoModelForSeq2SeqLM" if is_seq2seq else "AutoModelForCausalLM"
    has_tokenizer = getattr(trainer, "processing_class", None) is not None
    lines = [f"from transformers import {auto}{', AutoTokenizer' if has_tokenizer else ''}", ""]
    if is_adapter:
        lines.append(
            "# an adapter folder: transformers loads the base model and the adapter (needs `pip install peft`)"
        )
    lines.append(f'model = {auto}.from_pretrained("{repo_id}")')
    if has_tokenizer:
        lines += [
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
            'inputs = tokenizer("The history of", return_tensors="pt")',
            "outputs = model.generate(**inputs, max_new_tokens=40, do_sample=True, top_p=0.9)",
            "print(tokenizer.decode(outputs[0], skip_special_tokens=True))",
        ]
    return "\n".join(lines)


def _architecture(model: Any) -> str:
    """The model class users load (`LlamaForCausalLM`), also under a PEFT wrapper."""
    if model is None:
        return "model"
    if is_peft_model(model):
        model = model.get_base_model()
    return type(model).__name__


def _model_rows(model: Any, peft_info: dict[str, str]) -> list[tuple[str, str]]:
    if model is None:
        return []
    config = getattr(model, "config", None)
    adapter = f" + {peft_info['type']} adapter" if peft_info else ""
    rows = [("architecture", f"`{_architecture(model)}`{adapter}")]
    total = _num_parameters(model)
    trainable = _num_parameters(model, only_trainable=True)
    rows.append(("parameters", _count(total)))
    if trainable != total:
        rows.append(("trainable parameters", _count(trainable)))
    for key in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    ):
        value = getattr(config, key, None) if config is not None else None
        if value is not None:
            rows.append((key, _fmt(value)))
    return rows


def _hyperparameters(trainer: Any) -> list[tuple[str, str]]:
    args, state = trainer.args, trainer.state
    world = int(getattr(args, "world_size", 1) or 1)
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
        ("warmup_steps", _fmt(getattr(args, "warmup_steps", 0))),
        ("weight_decay", _fmt(args.weight_decay)),
        ("max_grad_norm", _fmt(args.max_grad_norm)),
        ("optimizer steps", str(state.global_step)),
        ("seed", str(args.seed)),
        ("precision", "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"),
        ("distributed", _distributed(trainer)),
    ]
    if getattr(state, "num_input_tokens_seen", 0):
        rows.append(("tokens seen", _count(int(state.num_input_tokens_seen))))
    return rows


def _distributed(trainer: Any) -> str:
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is None:
        return "single process"
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    kind = {"NO": "single process", "MULTI_CPU": "DDP (CPU)", "MULTI_GPU": "DDP"}.get(kind, kind)
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = accelerator.state.deepspeed_plugin
        stage = plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if plugin else None
        kind = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed"
    elif getattr(trainer, "is_fsdp_enabled", False):
        plugin = accelerator.state.fsdp_plugin
        kind = f"FSDP{getattr(plugin, 'fsdp_version', '')}"
    return f"{kind} ({accelerator.num_processes} processes)" if accelerator.num_processes > 1 else kind


def _last(log_history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(log_history):
        if key in entry and isinstance(entry[key], (int, float)):
            return float(entry[key])
    return None


def _ppl(loss: float | None) -> str | None:
    if loss is None:
        return None
    return f"{math.exp(loss):.4g}" if loss < 700 else "inf"


def _metrics(log_history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Final values from `log_history`; perplexity is exp of the cross-entropy (the SALT loss includes KD)."""
    rows: list[tuple[str, str]] = []
    train_loss, train_ce = _last(log_history, "loss"), _last(log_history, "loss_ce")
    eval_loss, eval_ce = _last(log_history, "eval_loss"), _last(log_history, "eval_loss_ce")
    if train_loss is not None:
        rows.append(("final train loss", f"{train_loss:.4f}"))
    if (mean := _last(log_history, "train_loss")) is not None:
        rows.append(("mean train loss (whole run)", f"{mean:.4f}"))
    if train_loss is not None or train_ce is not None:
        ce = train_ce if train_ce is not None else train_loss
        rows.append(("final train perplexity", _ppl(ce)))
    if eval_loss is not None:
        rows.append(("final eval loss", f"{eval_loss:.4f}"))
        rows.append(("final eval perplexity", _ppl(eval_ce if eval_ce is not None else eval_loss)))
    for key, label in _EXTRA_METRICS:
        for prefix in ("", "eval_", "test_"):
            value = _last(log_history, prefix + key)
            if value is not None:
                rows.append((f"{prefix}{key} ({label})", f"{value:.4g}"))
    return rows


def _log_table(log_history: list[dict[str, Any]]) -> str:
    """A short markdown table of the loss curve (train and eval by step), at most a dozen rows."""
    by_step: dict[int, dict[str, float]] = {}
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        row = by_step.setdefault(int(step), {})
        for key in ("loss", "eval_loss"):
            if key in entry:
                row[key] = float(entry[key])
    steps = [s for s in sorted(by_step) if by_step[s]]
    if not steps:
        return ""
    if len(steps) > _MAX_LOG_ROWS:
        picks = {steps[round(i * (len(steps) - 1) / (_MAX_LOG_ROWS - 1))] for i in range(_MAX_LOG_ROWS)}
        steps = sorted(picks)
    columns = [k for k in ("loss", "eval_loss") if any(k in by_step[s] for s in steps)]
    names = {"loss": "train loss", "eval_loss": "eval loss"}
    lines = ["| step | " + " | ".join(names[c] for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for s in steps:
        cells = [f"{by_step[s][c]:.4f}" if c in by_step[s] else "" for c in columns]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hf_salt_version() -> str:
    from hf_salt import __version__

    return __version__


def _framework_versions() -> list[tuple[str, str]]:
    versions = [("hf-salt", _hf_salt_version())]
    return versions + [(name, v) for name in _FRAMEWORKS if (v := _version(name)) is not None]


def _is_main_process(trainer: Any) -> bool:
    check = getattr(trainer, "is_world_process_zero", None)
    return bool(check()) if callable(check) else True
