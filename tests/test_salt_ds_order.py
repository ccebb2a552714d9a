"""SALT_DS as a data source: the first n_KD optimizer steps read the pool, later steps the rows plain SALT reads
there; the same step count as plain SALT (max_steps and num_train_epochs), exact resume, any accumulation."""

from __future__ import annotations

import datasets
import torch

from hf_salt.salt.config import SALTConfig
from hf_salt.salt.trainer import SALTTrainer
from hf_salt.salt_ds import SALTDSPlan, SALTDSSampler, SALTDSSource
from hf_salt.zoo import build_model

VOCAB, SEQ = 64, 8
POOL_MARK, TRAIN_MARK = 1, 2  # first token of every pool / train row; the second is the row's id


def _rows(n: int, mark: int, seed: int, scored: bool = False) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, SEQ), generator=g)
    ids[:, 0] = mark
    ids[:, 1] = torch.arange(n)
    data = {"input_ids": ids.tolist(), "attention_mask": [[1] * SEQ] * n, "labels": ids.tolist()}
    if scored:  # what `select` returns: the score columns ride along and must not reach the model
        data["salt_ds_score"] = [1.0] * n
        data["salt_ds_num_learnable"] = [3] * n
    return datasets.Dataset.from_dict(data)


class Recording(SALTTrainer):
    """Records (mark, row id) of every micro-batch the model trains on."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append([tuple(r) for r in inputs["input_ids"][:, :2].tolist()])
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _run(out, train, pool=None, *, resume=None, **kw) -> Recording:
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = Recording(
        model=build_model("llama-tiny", vocab_size=VOCAB, seed=1),
        args=SALTConfig(**{**base, **kw}),
        teacher_model=build_model("llama-tiny", vocab_size=VOCAB, seed=0),
        train_dataset=train,
        salt_ds_pool=pool,
    )
    trainer.seen = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_order_is_a_pure_function_of_epoch_offset_and_seed():
    pool, train = _rows(5, POOL_MARK, 0, scored=True), _rows(9, TRAIN_MARK, 1)
    source = SALTDSSource(train, pool)
    plan = SALTDSPlan(kd_steps=4, global_batch_size=4, steps_per_epoch=3)  # 9 rows: steps of 4, 4, 1
    sampler = SALTDSSampler(source, plan, seed=0)
    epochs = [sampler.epoch_indices(e) for e in range(3)]
    assert [len(e) for e in epochs] == [9, 9, 9] and len(sampler) == 9
    n = len(train)
    # steps 0-2 (all of epoch 0) and step 3 (epoch 1's first 4 rows) read the pool: 13 reads of 5 rows
    assert [sampler.pool_positions(e) for e in range(3)] == [9, 4, 0]
    stream = [i - n for i in epochs[0] + epochs[1][:4]]
    assert all(0 <= r < 5 for r in stream) and all(i < n for i in epochs[1][4:] + epochs[2])
    assert sorted(stream[:5]) == sorted(stream[5:10]) == list(range(5)) and stream[:5] != stream[5:10]
    # other positions: the train rows a plain seedable sampler reads there (randperm seeded seed + epoch)
    for e in (1, 2):
        plain = torch.randperm(n, generator=torch.Generator().manual_seed(0 + e)).tolist()
        assert epochs[e][sampler.pool_positions(e) :] == plain[sampler.pool_positions(e) :]
    # set_epoch reaches the order through the sampler or the dataset (a resumed DDP loader)
    sampler.set_epoch(2)
    assert list(sampler) == epochs[2]
    source.set_epoch(1)
    assert list(sampler) == epochs[1]
    assert SALTDSSampler(source, plan, seed=0).epoch_indices(1) == epochs[1]
    assert SALTDSSampler(source, plan, seed=1).epoch_indices(1) != epochs[1]
    sequential = SALTDSSampler(source, plan, seed=0, shuffle=False).epoch_indices(1)
    assert sequential[4:] == list(range(4, 9))
    # pool rows come with the train set's columns only
    assert set(source[n]) == {"input_ids", "attention_mask", "labels"}


def test_epoch_based_run_has_plain_salts_steps_and_rows(tmp_path):
    """The issue's reproduction: 16 rows, batch 4, 3 epochs, n_KD = 25 %: 12 steps as plain SALT (the collator
    design ran 36 and KD covered 8 % of them); steps 0-2 read only pool rows, later steps plain SALT's rows."""
    train, pool = _rows(16, TRAIN_MARK, 1), _rows(12, POOL_MARK, 0, scored=True)
    plain = _run(tmp_path / "plain", train, num_train_epochs=3, kd_steps=0.25)
    ds = _run(tmp_path / "ds", train, pool, num_train_epochs=3, kd_steps=0.25)
    assert plain.state.global_step == ds.state.global_step == 12 and ds.kd_steps == 3
    assert len(ds.seen) == 12
    assert all(m == POOL_MARK for b in ds.seen[:3] for m, _ in b)
    assert sorted(r for b in ds.seen[:3] for _, r in b) == list(range(12))  # the pool, once, shuffled
    assert ds.seen[3:] == plain.seen[3:]  # from step n_KD on: exactly plain SALT's rows


def test_epoch_boundaries_with_a_short_last_step_and_kd_across_epochs(tmp_path):
    """18 rows, batch 4: 5 steps per epoch, the last one of 2 rows; n_KD = 7 spans into epoch 1."""
    train, pool = _rows(18, TRAIN_MARK, 1), _rows(40, POOL_MARK, 0)
    ds = _run(tmp_path / "ds", train, pool, num_train_epochs=3, kd_steps=7)
    assert ds.state.global_step == 15 and [len(b) for b in ds.seen[:5]] == [4, 4, 4, 4, 2]
    marks = [{m for m, _ in b} for b in ds.seen]
    assert marks[:7] == [{POOL_MARK}] * 7 and marks[7:] == [{TRAIN_MARK}] * 8
    pool_rows = [r for b in ds.seen[:7] for _, r in b]
    assert len(pool_rows) == 26 and len(set(pool_rows)) == 26  # one pass over 40 rows, no repeats


def test_max_steps_gradient_accumulation_and_exact_resume(tmp_path):
    """max_steps, 2 x 2 accumulation on 9 rows (3 steps per epoch, the last one of 1 row): n_KD = 4 steps read
    the pool (epoch 0 and the first step of epoch 1); resuming inside the KD stage (checkpoint 2) or in epoch 1
    (checkpoint 4) reads the same rows and ends with the same weights."""
    train, pool = _rows(9, TRAIN_MARK, 1), _rows(5, POOL_MARK, 0, scored=True)  # pool repeated
    kw = dict(
        max_steps=7,
        kd_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    full = _run(tmp_path / "run", train, pool, **kw)
    plain = _run(tmp_path / "plain", train, **{**kw, "save_strategy": "no"})
    assert full.state.global_step == plain.state.global_step == 7
    # epoch 0: 5 micro-batches in 3 steps (the last of one row); step 3: the first step of epoch 1
    steps = [sum(full.seen[a:b], []) for a, b in ((0, 2), (2, 4), (4, 5), (5, 7))]
    assert [len(s) for s in steps] == [4, 4, 1, 4]
    assert all(m == POOL_MARK for s in steps for m, _ in s)
    assert all(m == TRAIN_MARK for b in full.seen[7:] for m, _ in b)
    assert full.seen[7:] == plain.seen[7:]
    for checkpoint, micro in (("checkpoint-2", 4), ("checkpoint-4", 7)):
        resumed = _run(tmp_path / "run", train, pool, resume=str(tmp_path / "run" / checkpoint), **kw)
        assert resumed.seen == full.seen[micro:], checkpoint
        for a, b in zip(full.model.parameters(), resumed.model.parameters()):
            torch.testing.assert_close(a, b)


def test_auto_schedule_reads_the_pool_for_the_cap_and_resumes_exactly(tmp_path):
    """kd_schedule="auto" (margin large enough to switch at the first window): KD ends before the cap, the pool
    still fills the cap's steps (documented: the order cannot follow a decision made after the loader has read
    ahead), the step count is plain SALT's, and a resume after the switch reads the same rows."""
    train, pool = _rows(16, TRAIN_MARK, 1), _rows(24, POOL_MARK, 0, scored=True)
    kw = dict(
        num_train_epochs=2,
        kd_steps=6,
        kd_schedule="auto",
        kd_auto_margin=100.0,
        logging_steps=1,
        save_strategy="steps",
        save_steps=5,
    )
    full = _run(tmp_path / "run", train, pool, **kw)
    assert full.state.global_step == 8 and full.kd_callback.auto.decided and full.kd_steps < 6
    marks = [{m for m, _ in b} for b in full.seen]
    assert marks == [{POOL_MARK}] * 6 + [{TRAIN_MARK}] * 2
    resumed = _run(tmp_path / "run", train, pool, resume=str(tmp_path / "run" / "checkpoint-5"), **kw)
    assert resumed.seen == full.seen[5:]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b)


def test_model_card_names_the_selection(tmp_path):
    from hf_salt.salt_ds import select

    train = _rows(8, TRAIN_MARK, 1)
    pool = select(_rows(8, POOL_MARK, 0, scored=True), n=4)
    trainer = _run(tmp_path, train, pool, max_steps=2, kd_steps=1)
    assert trainer.card_method() == "salt+salt_ds"
    assert set(pool.salt_ds_selection) <= set(trainer.method_info())
