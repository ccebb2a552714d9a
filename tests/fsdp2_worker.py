"""One rank of tests/test_fsdp2.py: SALT's loss and gradients with the student sharded by FSDP2 (`fully_shard`
on each decoder layer, then the root, as accelerate's FSDP2 plugin does) against the same model unsharded.

Run by ``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_worker.py OUT_DIR``; each rank writes
``OUT_DIR/rank{r}.json`` with the loss and the largest gradient differences.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch


def main(out_dir: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from hf_salt import SALTConfig, SALTTrainer
    from hf_salt.zoo import build_model

    torch.manual_seed(0)
    args = SALTConfig(
        output_dir=str(Path(out_dir) / "run"),
        use_cpu=True,
        kd_weight=0.5,
        kd_steps=4,
        max_steps=8,
        report_to=[],
        save_strategy="no",
    )
    rank = args.process_index
    student = build_model("llama-tiny-2x", vocab_size=128, seed=0)
    teacher = build_model("llama-tiny", vocab_size=128, seed=1)
    reference = copy.deepcopy(student)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (2 * args.world_size, 16), generator=gen)
    ids[0, :3] = -100  # some ignored labels: the normaliser counts only the rest
    full = {"input_ids": ids.clamp_min(0), "labels": ids.clone()}
    n_items = (ids[:, 1:] != -100).sum()  # the whole step's tokens, all ranks (what the Trainer passes)

    trainer = SALTTrainer(model=reference, args=args, teacher_model=teacher)
    trainer.kd_callback.resolve(args.max_steps)
    trainer.kd_state.kd_weight = 0.5
    trainer.current_gradient_accumulation_steps = 1
    reference.train()
    # the unsharded reference sees the whole batch; compute_loss scales by the process count (DDP-style mean)
    ref_loss = trainer.compute_loss(reference, dict(full), num_items_in_batch=n_items) / args.world_size
    ref_loss.backward()
    ref_metrics = trainer._metrics.pop()

    for layer in student.model.layers:
        fully_shard(layer)
    fully_shard(student)
    student.train()
    rows = slice(2 * rank, 2 * rank + 2)  # each rank its own half of the batch
    local = {k: v[rows] for k, v in full.items()}
    loss = trainer.compute_loss(student, local, num_items_in_batch=n_items)
    loss.backward()
    local_metrics = trainer._metrics.pop(trainer.accelerator)
    total = loss.detach().clone()
    torch.distributed.all_reduce(total)
    ref_grads = dict(reference.named_parameters())
    diffs, norms = {}, {}
    for name, p in student.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        # FSDP averages gradients over ranks: the mean of the halves is the whole batch's gradient
        diffs[name] = float((g - ref_grads[name].grad).abs().max())
        norms[name] = float(ref_grads[name].grad.abs().max())
    Path(out_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "loss_sum_over_ranks": float(total) / args.world_size,
                "ref_loss": float(ref_loss),
                "min_grad_scale": min(norms.values()),
                "max_grad_diff": max(diffs.values()),
                "worst": max(diffs, key=diffs.get),
                "n_params": len(diffs),
                "ref_metrics": ref_metrics,
                "metrics": local_metrics,
            }
        )
    )


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    finally:  # a gloo group left alive at exit can abort the process ("terminate called without an active
        # exception") after the work is done: both ranks leave it together
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
