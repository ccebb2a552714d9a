"""One rank of tests/test_fsdp2.py's LR-scale check: a HyperCloning clone sharded by FSDP2 (`fully_shard` on each
decoder layer, then the root, as accelerate's FSDP2 plugin does) gets the param groups and the ramped LambdaLR
that GrownLRMixin builds, and its optimizer steps give the unsharded one-process parameters.

Run by ``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_lr_worker.py OUT_DIR``; each rank writes
``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import torch

STEPS, RAMP = 3, 2


def main(out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard
    from transformers import Trainer, TrainingArguments

    from hf_salt.hypercloning import GrownLRMixin, clone, lr_scales
    from hf_salt.hypercloning.optim import SCALE_KEY
    from hf_salt.zoo import build_model

    class GrownTrainer(GrownLRMixin, Trainer):
        pass

    args = TrainingArguments(
        output_dir=str(Path(out_dir) / "run"), use_cpu=True, learning_rate=1e-2, weight_decay=0.1,
        lr_scheduler_type="linear", report_to=[], save_strategy="no",
    )  # fmt: skip
    rank = args.process_index
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no noise: an exact clone
        student = clone(build_model("llama-micro", vocab_size=128, seed=0), 2)
    reference, one_rate, initial = copy.deepcopy(student), copy.deepcopy(student), copy.deepcopy(student)
    late = copy.deepcopy(
        student
    )  # sharded after its optimizer is built, as Trainer + accelerate do for FSDP2
    scales = lr_scales(reference)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 128, (4, 16), generator=gen) for _ in range(STEPS)]

    def shard(model: torch.nn.Module) -> None:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)

    def run(
        model: torch.nn.Module, cls: type = GrownTrainer, shard_late: bool = False
    ) -> tuple[list[dict], list[list[float]]]:
        trainer = cls(model=model, args=args, **({"lr_scale_steps": RAMP} if cls is GrownTrainer else {}))
        optimizer = trainer.create_optimizer()
        if shard_late:  # accelerate's prepare: shard, then put each sharded parameter in its old one's group
            before = {id(p): n for n, p in model.named_parameters()}
            shard(model)
            after = dict(model.named_parameters())
            for group in optimizer.param_groups:
                group["params"] = [after[before[id(p)]] for p in group["params"]]
        scheduler = trainer.create_scheduler(num_training_steps=4, optimizer=optimizer)
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [
            {"names": sorted(names[id(p)] for p in g["params"]), "scale": g.get(SCALE_KEY, 1.0),
             "weight_decay": g["weight_decay"]}
            for g in optimizer.param_groups
        ]  # fmt: skip
        rates = []
        model.train()
        for ids in batches:  # every rank the whole batch: FSDP's mean of equal gradients is that gradient
            rates.append([g["lr"] for g in optimizer.param_groups])
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        return groups, rates

    ref_groups, ref_rates = run(reference)
    run(one_rate, Trainer)  # the plain Trainer: one group per decay setting, one rate
    shard(student)
    groups, rates = run(student)
    late_groups, late_rates = run(late, shard_late=True)
    ref_params = dict(reference.named_parameters())
    diffs = {}
    for model in (student, late):
        for n, p in model.named_parameters():
            full = (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()
            diffs[n] = max(diffs.get(n, 0.0), float((full - ref_params[n].detach()).abs().max()))

    def gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
        return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))

    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "scales": scales,
                "groups": groups,
                "ref_groups": ref_groups,
                "rates": rates,
                "late_groups": late_groups,
                "late_rates": late_rates,
                "ref_rates": ref_rates,
                "max_param_diff": max(diffs.values()),
                "worst": max(diffs, key=diffs.get),
                "sharded": sorted(n for n, p in student.named_parameters() if hasattr(p, "full_tensor")),
                "late_sharded": sorted(n for n, p in late.named_parameters() if hasattr(p, "full_tensor")),
                "n_params": len(diffs),
                "moved": gap(reference, initial),
                "scaled_vs_one_rate": gap(reference, one_rate),
            }
        )
    )


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        main(sys.argv[1])
    finally:
        dist.destroy_process_group()
