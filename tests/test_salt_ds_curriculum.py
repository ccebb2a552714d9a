"""SALTDSCollator: the curriculum switches from the pool to the full set at n_KD and resumes exactly."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_salt.salt_ds import SALTDSCollator, kd_budget
from hf_salt.zoo import build_model

VOCAB, SEQ = 64, 8
POOL_MARK, TRAIN_MARK = 1, 2  # first token of every pool / train row
PER_DEVICE, ACCUM, KD_STEPS, MAX_STEPS = 2, 2, 3, 6
GLOBAL = PER_DEVICE * ACCUM


def _rows(n: int, mark: int, seed: int, scored: bool = False) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ), generator=g)
    ids[:, 0] = mark
    ids[:, 1] = torch.arange(n)  # row identity
    data = {"input_ids": ids.tolist(), "attention_mask": [[1] * SEQ] * n, "labels": ids.tolist()}
    if scored:
        data["salt_ds_score"] = [1.0] * n
        data["salt_ds_num_learnable"] = [3] * n
    return datasets.Dataset.from_dict(data)


@pytest.fixture(scope="module")
def pool():
    return _rows(5, POOL_MARK, seed=0, scored=True)  # smaller than the KD budget (12): repeated


@pytest.fixture(scope="module")
def train_set():
    return _rows(9, TRAIN_MARK, seed=1)


def test_curriculum_layout(pool, train_set):
    collator = SALTDSCollator(pool)
    cur = collator.curriculum(
        train_set, kd_steps=KD_STEPS, global_batch_size=GLOBAL, total_samples=30, seed=0
    )
    budget = kd_budget(KD_STEPS, GLOBAL)
    assert len(cur) == 30
    sources = [cur.source(i) for i in range(30)]
    assert all(s == "pool" for s, _ in sources[:budget]) and all(s == "train" for s, _ in sources[budget:])
    # each pass over the pool / epoch over the train set is a permutation, re-shuffled per pass
    assert sorted(r for _, r in sources[:5]) == list(range(5)) == sorted(r for _, r in sources[5:10])
    assert sorted(r for _, r in sources[budget : budget + 9]) == list(range(9))
    assert [r for _, r in sources[budget : budget + 9]] != [r for _, r in sources[budget + 9 : budget + 18]]
    # deterministic in (index, seed); another seed is another order
    again = SALTDSCollator(pool).curriculum(
        train_set, kd_steps=3, global_batch_size=4, total_samples=30, seed=0
    )
    assert [again.source(i) for i in range(30)] == sources
    other = SALTDSCollator(pool).curriculum(
        train_set, kd_steps=3, global_batch_size=4, total_samples=30, seed=1
    )
    assert [other.source(i) for i in range(30)] != sources
    # collating drops salt_ds_* columns and stacks the model columns
    batch = collator([cur[0], cur[budget]])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"][:, 0].tolist() == [POOL_MARK, TRAIN_MARK]


def test_curriculum_errors(pool, train_set):
    with pytest.raises(ValueError, match="empty"):
        SALTDSCollator(pool.select([]))
    short = train_set.map(lambda r: {k: r[k][:4] for k in ("input_ids", "attention_mask", "labels")})
    with pytest.raises(ValueError, match="same block_size"):
        SALTDSCollator(pool).curriculum(short, kd_steps=1, global_batch_size=2, total_samples=4)
    with pytest.raises(ValueError, match="same model columns"):
        SALTDSCollator(pool.remove_columns("labels")).curriculum(
            train_set, kd_steps=1, global_batch_size=2, total_samples=4
        )


class RecordingTrainer(Trainer):
    """Records the rows of every micro-batch the model trains on (mark, row id)."""

    seen: list[list[tuple[int, int]]]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append([tuple(r) for r in inputs["input_ids"][:, :2].tolist()])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _trainer(tmp_path, pool, train_set, max_steps: int) -> RecordingTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=ACCUM,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=2,
        train_sampling_strategy="sequential",  # what SALTTrainer does for a curriculum collator
        learning_rate=1e-3,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    collator = SALTDSCollator(pool)
    curriculum = collator.curriculum(
        train_set,
        kd_steps=KD_STEPS,
        global_batch_size=GLOBAL,
        total_samples=MAX_STEPS * GLOBAL,
        seed=args.seed,
    )
    model = build_model("llama-tiny", vocab_size=VOCAB, seed=0)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=curriculum, data_collator=collator)
    trainer.seen = []
    return trainer


def test_stage_switch_and_exact_resume_with_trainer(tmp_path, pool, train_set):
    full = _trainer(tmp_path / "full", pool, train_set, MAX_STEPS)
    full.train()
    micro = full.seen
    assert len(micro) == MAX_STEPS * ACCUM
    marks = [{m for m, _ in batch} for batch in micro]
    kd_micro = KD_STEPS * ACCUM
    assert all(m == {POOL_MARK} for m in marks[:kd_micro])  # KD stage: only the pool
    assert all(m == {TRAIN_MARK} for m in marks[kd_micro:])  # afterwards: only the full set
    assert [r for b in micro for r in b] == [
        (m, r) for m, r in (full.train_dataset[i]["input_ids"][:2] for i in range(MAX_STEPS * GLOBAL))
    ]

    # resume from the checkpoint at step 2 (inside the KD stage): the same rows, in the same order
    resumed = _trainer(tmp_path / "full", pool, train_set, MAX_STEPS)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.seen == micro[2 * ACCUM :]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)


def test_salt_trainer_stage_switch_and_resume(tmp_path, pool, train_set):
    """With SALTTrainer itself: it finds `curriculum`, reads it in order, switches at kd_steps, resumes exactly."""
    from hf_salt.salt.config import SALTConfig
    from hf_salt.salt.trainer import SALTTrainer

    class Recording(SALTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.seen.append([tuple(r) for r in inputs["input_ids"][:, :2].tolist()])
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def make(out) -> Recording:
        args = SALTConfig(
            output_dir=str(out),
            per_device_train_batch_size=PER_DEVICE,
            gradient_accumulation_steps=ACCUM,
            max_steps=MAX_STEPS,
            kd_steps=KD_STEPS,
            save_strategy="steps",
            save_steps=2,
            learning_rate=1e-3,
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )
        trainer = Recording(
            model=build_model("llama-tiny", vocab_size=VOCAB, seed=1),
            args=args,
            teacher_model=build_model("llama-tiny", vocab_size=VOCAB, seed=0),
            train_dataset=train_set,
            data_collator=SALTDSCollator(pool),
        )
        trainer.seen = []
        return trainer

    full = make(tmp_path / "run")
    full.train()
    assert full.kd_steps == KD_STEPS
    marks = [{m for m, _ in batch} for batch in full.seen]
    assert len(marks) == MAX_STEPS * ACCUM
    assert all(m == {POOL_MARK} for m in marks[: KD_STEPS * ACCUM])
    assert all(m == {TRAIN_MARK} for m in marks[KD_STEPS * ACCUM :])

    resumed = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.seen == full.seen[2 * ACCUM :]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)
