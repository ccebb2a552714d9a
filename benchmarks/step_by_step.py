"""Benchmark: standard fine-tuning vs distilling step-by-step across training-set fractions.

Same model (zoo preset, trained from scratch), same optimizer steps, batch size, learning rate and schedule
for both arms; the only difference is the rationale task (`rationale_weight` 0 vs 1), trained with the
library's `StepByStepTrainer` / `StepByStepCollator` / `StepByStepConfig`. Label accuracy on a fixed
held-out set (label task only, greedy generation). Two datasets:

- `shop` (constructed here): "Ann buys a pen and a cup. How much does Ann pay?". Every item has a hidden
  price (1-9) that never appears in any input; the label is the total. The rationale is what a teacher
  that *knows* the prices would write: "A pen costs 3. A cup costs 5. 3 + 5 = 8." So, as with an LLM's
  commonsense rationales in the paper, the rationale verbalises knowledge and an intermediate step that
  the label alone teaches only indirectly (from sums of two unknowns). Held-out rows use item PAIRS never
  seen in training (every item is in the full train split), so memorising pair -> total does not help:
  the model must learn per-item prices and add them. Small enough for a from-scratch T5 on one CPU core.
- `cqa` (shipped, PaLM-540B rationales): the real data. A from-scratch model this small has no
  commonsense, so it cannot be expected to beat the 5-way chance level (20%); it is run to exercise the real
  files, not to reproduce the paper.

A distilling step-by-step step runs two forward/backward passes (label and rationale views), so at the
same step budget it uses about 2x (rationale targets are longer: more) the compute of standard
fine-tuning; the wall-clock seconds of every run are in the JSON.

    .venv/bin/python benchmarks/step_by_step.py --out benchmarks/step_by_step.png
    # compute control: the standard arm alone with 2x the steps
    .venv/bin/python benchmarks/step_by_step.py --datasets shop --arms standard --steps 1200 \
        --fractions 0.125,0.25,0.5 --out /tmp/compute_matched.png
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict

NAMES = ["Ann", "Ben", "Cal", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim"]
ITEMS = [
    "pen", "cup", "hat", "map", "bag", "box", "cap", "mug", "fan", "kite",
    "lamp", "book", "sock", "ring", "bell", "comb", "drum", "fork", "vase", "rope",
    "soap", "tape", "card", "coin", "doll", "egg", "flag", "glue", "horn", "jar",
    "key", "leaf", "nail", "pot", "rug", "sack", "tie", "toy", "wig", "yarn",
]  # fmt: skip


def make_shop(n_test: int, seed: int) -> tuple[Dataset, Dataset]:
    """Train/test rows over disjoint ordered item pairs (every item is seen in training, no test pair is)."""
    rng = random.Random(seed)
    price = {item: rng.randint(1, 9) for item in ITEMS}
    pairs = [(a, b) for a in ITEMS for b in ITEMS if a != b]
    rng.shuffle(pairs)
    test_pairs, train_pairs = pairs[:n_test], pairs[n_test:]

    def row(a: str, b: str) -> dict:
        name = rng.choice(NAMES)
        total = price[a] + price[b]
        return {
            "input": f"{name} buys a {a} and a {b}. How much does {name} pay?",
            "label": str(total),
            "rationale": f"A {a} costs {price[a]}. A {b} costs {price[b]}. {price[a]} + {price[b]} = {total}.",
            "llm_label": str(total),
        }

    train = Dataset.from_list([row(a, b) for a, b in train_pairs])
    return train, Dataset.from_list([row(a, b) for a, b in test_pairs])


def load_data(name: str, a: argparse.Namespace) -> DatasetDict:
    if name == "shop":
        train, test = make_shop(a.n_eval, seed=1234)
        return DatasetDict({"train": train, "validation": test})
    from hf_salt.step_by_step.data import load_step_by_step

    data = load_step_by_step(name)
    return DatasetDict({"train": data["train"], "validation": data["validation"].select(range(a.cqa_n_eval))})


def shop_tokenizer(train: Dataset):  # noqa: ANN201 - a PreTrainedTokenizerFast
    """A small BPE (400 tokens) trained on the train split: whole words mostly, a cheap softmax."""
    from hf_salt.data import train_tokenizer

    texts = [f"predict: explain: {r['input']} {r['rationale']} {r['label']}" for r in train] * 2
    return train_tokenizer(texts, vocab_size=400, show_progress=False)


def majority(data: DatasetDict) -> float:
    top = Counter(data["train"]["label"]).most_common(1)[0][0]
    return sum(lab == top for lab in data["validation"]["label"]) / len(data["validation"])


def run_one(data: DatasetDict, fraction: float, weight: float, seed: int, cfg: dict, tok, tag: str) -> dict:  # noqa: ANN001
    from hf_salt.step_by_step.config import StepByStepConfig
    from hf_salt.step_by_step.trainer import StepByStepTrainer
    from hf_salt.zoo import build_model

    train = data["train"]
    if fraction < 1:  # as the official --subsample: a seeded random subset
        train = train.train_test_split(train_size=fraction, seed=seed)["train"]
    steps = cfg["steps"]
    args = StepByStepConfig(
        output_dir=f"/tmp/hf_salt_bench_sbs/{tag}",
        max_steps=steps,
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=100,
        learning_rate=cfg["lr"],
        weight_decay=0.01,
        warmup_steps=steps // 20,
        lr_scheduler_type="cosine",
        rationale_weight=weight,
        max_source_length=cfg["max_source_length"],
        max_target_length=cfg["max_target_length"],
        max_rationale_length=cfg["max_rationale_length"],
        generation_max_length=cfg["max_target_length"],
        eval_strategy="no",
        save_strategy="no",
        logging_steps=max(1, steps // 4),
        report_to=[],
        seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = build_model(cfg["preset"], vocab_size=len(tok), seed=seed, **cfg["overrides"])
    trainer = StepByStepTrainer(
        model, args, train_dataset=train, eval_dataset=data["validation"], processing_class=tok
    )
    start = time.time()
    trainer.train()
    train_s = time.time() - start
    metrics = trainer.evaluate()
    logs = [h for h in trainer.state.log_history if "loss_label" in h]
    return {
        "tag": tag,
        "fraction": fraction,
        "seed": seed,
        "train_rows": len(train),
        "rationale_weight": weight,
        "accuracy": metrics["eval_accuracy"],
        "eval_loss": round(metrics["eval_loss"], 4),
        "final_train_loss_label": logs[-1]["loss_label"] if logs else None,
        "final_train_loss_rationale": logs[-1]["loss_rationale"] if logs else None,
        "train_seconds": round(train_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="shop,cqa")
    p.add_argument("--fractions", default="0.125,0.25,0.5,1.0")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--preset", default="t5-tiny")
    p.add_argument(
        "--model_overrides", "--model-overrides", default='{"d_model": 64, "d_ff": 256, "d_kv": 16}'
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch_size", "--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n_eval", "--n-eval", type=int, default=300, help="held-out item pairs of the shop task")
    p.add_argument("--cqa_fractions", "--cqa-fractions", default="0.25,1.0")
    p.add_argument("--cqa_seeds", "--cqa-seeds", default="0")
    p.add_argument("--cqa_preset", "--cqa-preset", default="t5-small")
    p.add_argument("--cqa_steps", "--cqa-steps", type=int, default=300)
    p.add_argument("--cqa_batch_size", "--cqa-batch-size", type=int, default=16)
    p.add_argument("--cqa_lr", "--cqa-lr", type=float, default=1e-3)
    p.add_argument("--cqa_n_eval", "--cqa-n-eval", type=int, default=300)
    p.add_argument("--arms", default="standard,step_by_step", help="which arms to run (both by default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/step_by_step.png")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    results, baselines = [], {}
    started = time.time()
    for name in a.datasets.split(","):
        data = load_data(name, a)
        if name == "shop":
            tok = shop_tokenizer(data["train"])
            cfg = dict(
                preset=a.preset,
                overrides=json.loads(a.model_overrides),
                steps=a.steps,
                batch_size=a.batch_size,
                lr=a.lr,
                max_source_length=48,
                max_target_length=8,
                max_rationale_length=40,
            )
            fractions, seeds = a.fractions, a.seeds
            baselines[name] = {"majority": majority(data)}
        else:
            from hf_salt.data import load_tokenizer

            tok = load_tokenizer()
            cfg = dict(
                preset=a.cqa_preset,
                overrides={},
                steps=a.cqa_steps,
                batch_size=a.cqa_batch_size,
                lr=a.cqa_lr,
                max_source_length=128,
                max_target_length=12,
                max_rationale_length=96,
            )
            fractions, seeds = a.cqa_fractions, a.cqa_seeds
            baselines[name] = {"majority": majority(data), "chance": 0.2}
        baselines[name].update(train_rows=len(data["train"]), eval_rows=len(data["validation"]))
        print(json.dumps({"dataset": name, **baselines[name]}), flush=True)
        for fraction in (float(f) for f in fractions.split(",")):
            for seed in (int(s) for s in seeds.split(",")):
                for weight, arm in ((0.0, "standard"), (1.0, "step_by_step")):
                    if arm not in a.arms.split(","):
                        continue
                    r = run_one(data, fraction, weight, seed, cfg, tok, f"{name}-{arm}-{fraction}-{seed}")
                    r.update(dataset=name, arm=arm)
                    results.append(r)
                    print(json.dumps(r), f"[{time.time() - started:.0f}s]", flush=True)
    out = Path(a.out)
    summary = summarize(results)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "args": vars(a),
                "baselines": baselines,
                "summary": summary,
                "results": results,
                "total_seconds": round(time.time() - started),
            },
            indent=1,
        )
    )
    for s in summary:
        print(json.dumps(s))
    plot(summary, baselines, out)


def summarize(results: list[dict]) -> list[dict]:
    keys = sorted({(r["dataset"], r["arm"], r["fraction"]) for r in results})
    rows = []
    for ds, arm, fraction in keys:
        accs = [
            r["accuracy"] for r in results if (r["dataset"], r["arm"], r["fraction"]) == (ds, arm, fraction)
        ]
        rows.append(
            {
                "dataset": ds,
                "arm": arm,
                "fraction": fraction,
                "accuracies": accs,
                "mean": statistics.mean(accs),
                "min": min(accs),
                "max": max(accs),
            }
        )
    return rows


def plot(summary: list[dict], baselines: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(s["dataset"] for s in summary))
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        for arm, style in (("standard", "o--"), ("step_by_step", "s-")):
            rows = sorted(
                (s for s in summary if s["dataset"] == name and s["arm"] == arm), key=lambda s: s["fraction"]
            )
            x = [s["fraction"] * 100 for s in rows]
            mean = [s["mean"] * 100 for s in rows]
            err = [[(s["mean"] - s["min"]) * 100 for s in rows], [(s["max"] - s["mean"]) * 100 for s in rows]]
            label = "standard fine-tuning" if arm == "standard" else "distilling step-by-step"
            ax.errorbar(x, mean, yerr=err, fmt=style, capsize=3, label=label)
        base = baselines.get(name, {})
        if "chance" in base:
            ax.axhline(base["chance"] * 100, color="grey", ls=":", label="chance (5-way)")
        ax.axhline(base.get("majority", 0) * 100, color="black", ls=":", lw=0.8, label="majority answer")
        ax.set_xscale("log", base=2)
        ax.set_xticks([12.5, 25, 50, 100], ["12.5", "25", "50", "100"])
        ax.set_xlabel("training data used (percent)")
        ax.set_ylabel("held-out label accuracy (percent)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
