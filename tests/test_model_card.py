"""Model cards: rendered from real tiny Trainer runs, checked on disk; push_to_hub with the upload replaced."""

from __future__ import annotations

import math
import re
import types
from pathlib import Path

import pytest
import torch
import transformers
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_salt.data import load_tokenizer
from hf_salt.model_card import TEMPLATE_PATH, method_tags, parse_method, write_model_card

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tiny_llama(vocab_size: int, name: str = "") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    model.config._name_or_path = name
    return model


def _data(vocab_size: int, n: int = 16, length: int = 16) -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (n, length), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _args(tmp_path: Path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _python_block(text: str) -> str:
    match = re.search(r"```python\n(.*?)```", text, re.S)
    assert match, "the card has no python quick start"
    return match.group(1)


def test_method_parsing_and_tags() -> None:
    assert parse_method("HyperCloning+salt") == ["hypercloning", "salt"]
    assert parse_method("salt-ds") == ["salt_ds"]
    assert method_tags("salt+salt_ds") == [
        "hf-salt",
        "salt",
        "knowledge-distillation",
        "salt-ds",
        "data-selection",
    ]
    with pytest.raises(ValueError, match="Unknown method 'salt\\+dpo'"):
        parse_method("salt+dpo")
    with pytest.raises(ValueError, match="Unknown method"):
        parse_method("")


def test_packaged_template_matches_source() -> None:
    """`model_cards/` is the source; the copy under hf_salt/assets/ is what a pip install ships."""
    source = REPO_ROOT / "model_cards" / TEMPLATE_PATH.name
    assert TEMPLATE_PATH.read_bytes() == source.read_bytes(), (
        "hf_salt/assets/model_cards/ is out of date: cp model_cards/*.md hf_salt/assets/model_cards/"
    )


def test_card_from_real_trainer_run(tmp_path: Path) -> None:
    tokenizer = load_tokenizer()
    vocab = len(tokenizer)
    model = _tiny_llama(vocab)
    teacher = _tiny_llama(vocab, name="me/tiny-teacher")
    args = _args(tmp_path, hub_model_id="me/tiny-salt-student")
    data = _data(vocab)
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()

    text = write_model_card(
        trainer,
        method="hypercloning+salt+salt_ds",
        method_info={
            "teacher": teacher,
            "n_kd": 3,  # alias of kd_steps
            "kd_schedule": "linear decay to 0 at n_KD",
            "omega": 0.5,
            "tau": 2.0,
            "divergence": "forward_kl",
            "pool_size": 64,
            "selected_size": 16,
            "top_k": 10,
            "statistic": "median",
            "band": (0.2, 0.8),
            "grown_from": "me/tiny-small",
            "width_multiplier": 2,
            "ffn_multiplier": 2,
            "custom_flag": "x",
        },
        dataset_name="wikitext-2",
        tags=["my-tag"],
        license="apache-2.0",
    )
    out = Path(args.output_dir)
    readme = out / "README.md"
    assert readme.read_text(encoding="utf-8") == text
    assert not [p for p in out.iterdir() if p.name.startswith(".README.")], "temporary file left behind"

    card = ModelCard.load(readme)
    assert card.data.tags == [
        "hf-salt",
        "hypercloning",
        "salt",
        "knowledge-distillation",
        "salt-ds",
        "data-selection",
        "my-tag",
    ]
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["wikitext-2"]
    assert card.data.base_model is None  # a freshly built model has no Hub id

    # method settings
    n_teacher = sum(p.numel() for p in teacher.parameters())
    for row in (
        f"| teacher | `me/tiny-teacher` ({n_teacher / 1e3:.3g}K parameters) |",
        "| n_KD (distillation steps) | 3 |",
        "| KD weight schedule | linear decay to 0 at n_KD |",
        "| omega (KD weight) | 0.5 |",
        "| tau (temperature) | 2 |",
        "| divergence | forward_kl |",
        "| teacher placement | not recorded |",
        "| candidate pool size | 64 |",
        "| selected examples | 16 |",
        "| top-k | 10 |",
        "| score statistic | median |",
        "| selection band | [0.2, 0.8] |",
        "| grown from | me/tiny-small |",
        "| width multiplier | 2 |",
        "| FFN multiplier | 2 |",
        "| noise SNR (dB) | not recorded |",
        "| depth multiplier | not recorded |",
        "| custom_flag | x |",
        "| optimizer steps | 4 |",
        "| total_train_batch_size | 4 |",
    ):
        assert row in text, row

    # training metrics, from the real log history
    history = trainer.state.log_history
    last_loss = [h["loss"] for h in history if "loss" in h][-1]
    last_eval = [h["eval_loss"] for h in history if "eval_loss" in h][-1]
    mean_loss = [h["train_loss"] for h in history if "train_loss" in h][-1]
    assert f"| final train loss | {last_loss:.4f} |" in text
    assert f"| final eval loss | {last_eval:.4f} |" in text
    assert f"| final eval perplexity | {math.exp(last_eval):.4g} |" in text
    assert f"| mean train loss (whole run) | {mean_loss:.4f} |" in text
    assert f"| 4 | {last_loss:.4f} | {last_eval:.4f} |" in text  # loss-curve table

    # framework versions and citations (SALT and SALT_DS share one paper: cited once)
    assert f"- transformers: {transformers.__version__}" in text
    assert f"- torch: {torch.__version__}" in text
    assert text.count("arXiv:2410.18779") == 1
    assert "arXiv:2409.12903" in text and "Samragh" in text
    assert "2305.02301" not in text

    # the quick start loads with plain transformers (repo id swapped for the local folder)
    code = _python_block(text)
    assert 'from_pretrained("me/tiny-salt-student")' in code
    scope: dict = {}
    exec(code.replace("me/tiny-salt-student", str(out)), scope)
    assert isinstance(scope["model"], LlamaForCausalLM)


def test_card_for_peft_adapter_folder(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama(128, name="me/tiny-base")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = _args(tmp_path, max_steps=2, eval_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=_data(128))
    trainer.train()
    trainer.save_model()  # PEFT writes adapter files and its own README.md
    out = Path(args.output_dir)
    assert (out / "adapter_config.json").exists()

    text = write_model_card(
        trainer,
        method="step_by_step",
        method_info={"teacher": "PaLM-540B (shipped rationales)", "lambda": 0.5, "dataset": "cqa"},
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model == "me/tiny-base"
    assert card.data.tags == ["hf-salt", "distilling-step-by-step", "rationale-distillation"]
    assert "PEFT adapter** (LORA)" in text and "`me/tiny-base`" in text
    assert "| rationales from | PaLM-540B (shipped rationales) |" in text
    assert "| lambda (rationale-task weight) | 0.5 |" in text
    assert "| task data | cqa |" in text and "| trained on LLM labels | not recorded |" in text
    assert "| trainable parameters |" in text
    assert "arXiv:2305.02301" in text and "Findings of the Association for Computational Linguistics" in text
    assert "pip install peft" in _python_block(text)
    assert "[More Information Needed]" not in text  # PEFT's placeholder card was replaced


def test_only_main_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _args(tmp_path, max_steps=1, eval_strategy="no")
    trainer = Trainer(model=_tiny_llama(64), args=args, train_dataset=_data(64))
    monkeypatch.setattr(trainer, "is_world_process_zero", lambda: False)
    text = write_model_card(trainer, method="salt", method_info={"kd_steps": 1})
    assert "| n_KD (distillation steps) | 1 |" in text
    assert not (Path(args.output_dir) / "README.md").exists()


def test_push_to_hub_hands_folder_and_card_to_hub_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainer.push_to_hub()` as users call it; only the two Hub calls are replaced."""

    class CardTrainer(Trainer):  # what SALTTrainer/StepByStepTrainer do
        def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
            return write_model_card(
                self,
                method="salt",
                method_info={"teacher": "me/tiny-teacher", "kd_steps": 2, "kd_weight": 0.5},
                model_name=model_name,
                dataset_name=dataset_name,
                tags=tags,
                **kwargs,
            )

    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append((repo_id, kwargs))
        return types.SimpleNamespace(repo_id=repo_id)

    def fake_upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        snapshot = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        calls["upload_folder"].append((kwargs, snapshot))
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)

    model = _tiny_llama(64)
    model.add_model_tags(["hf-salt", "salt"])  # trainers tag the model so push_to_hub keeps the tags
    args = _args(tmp_path, max_steps=2, eval_strategy="no", hub_model_id="me/tiny-salt")
    trainer = CardTrainer(model=model, args=args, train_dataset=_data(64))
    trainer.train()
    assert trainer.push_to_hub(commit_message="SALT run", license="apache-2.0") == "commit-info"

    assert [c[0] for c in calls["create_repo"]] == ["me/tiny-salt"]
    assert len(calls["upload_folder"]) == 1
    kwargs, files = calls["upload_folder"][0]
    assert kwargs["repo_id"] == "me/tiny-salt"
    assert Path(kwargs["folder_path"]) == Path(args.output_dir)
    assert kwargs["commit_message"] == "SALT run"
    assert "_*" in kwargs["ignore_patterns"]
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    card = files["README.md"].decode()
    metadata = ModelCard(card).data
    assert metadata.tags == ["hf-salt", "salt", "knowledge-distillation"]
    assert metadata.license == "apache-2.0"
    assert metadata.model_name == "tiny-salt"
    assert "| teacher | me/tiny-teacher |" in card and "| omega (KD weight) | 0.5 |" in card


def test_hypercloned_model_is_recorded_from_its_config(tmp_path: Path) -> None:
    """A model grown with hf_salt.hypercloning carries its provenance; the card picks it up by itself."""
    from hf_salt.hypercloning import clone

    small = _tiny_llama(64, name="me/tiny-small")
    grown = clone(small, width_multiplier=2, snr_db=10.0)
    args = _args(tmp_path, max_steps=1, eval_strategy="no")
    trainer = Trainer(model=grown, args=args, train_dataset=_data(64))
    trainer.train()
    text = write_model_card(trainer, method="salt", method_info={"teacher": "me/tiny-small", "kd_steps": 1})
    card = ModelCard.load(Path(args.output_dir) / "README.md")
    assert card.data.tags[:4] == ["hf-salt", "hypercloning", "salt", "knowledge-distillation"]
    assert card.data.base_model == "me/tiny-small"
    rows = ("| grown from | me/tiny-small |", "| width multiplier | 2 |", "| noise SNR (dB) | 10 |")
    for row in rows:
        assert row in text, row
    assert "arXiv:2409.12903" in text and "arXiv:2410.18779" in text
