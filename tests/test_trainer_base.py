"""The trainer base: one metrics buffer (device sums, one reduction at log time) and one model card."""

from __future__ import annotations

import pytest
import torch

from hf_salt.salt.trainer import SALTTrainer
from hf_salt.step_by_step.trainer import StepByStepTrainer
from hf_salt.trainer_base import MetricsBuffer, TrainerBase


class _TwoRanks:
    """An accelerator stand-in whose reduce adds a second rank's buffer."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, other: torch.Tensor) -> None:
        self.other, self.calls = other, 0

    def reduce(self, tensor, reduction):
        assert reduction == "sum"
        self.calls += 1
        return tensor + self.other


def test_metrics_buffer_weighted_means_over_ranks():
    buf = MetricsBuffer(["ce", "kd", "omega"])
    buf.add("ce", torch.tensor(6.0), torch.tensor(3))  # a token-loss sum and its token count
    buf.add("ce", torch.tensor(4.0), torch.tensor(1))
    buf.add("omega", 0.5)
    buf.add("omega", 0.25)
    assert buf.pop() == {"ce": pytest.approx(2.5), "omega": pytest.approx(0.375)}  # kd got no weight
    assert buf.pop() == {}  # emptied
    buf.add("ce", torch.tensor(6.0), 3)
    buf.add("omega", 0.5)
    other = torch.tensor([[2.0, 0.0, 0.5], [1.0, 0.0, 1.0]])  # rank 1: ce 2 over 1 token, omega 0.5
    acc = _TwoRanks(other)
    assert buf.pop(acc) == {"ce": pytest.approx(2.0), "omega": pytest.approx(0.5)} and acc.calls == 1


def test_one_card_and_one_log_for_both_trainers():
    for cls in (SALTTrainer, StepByStepTrainer):
        assert issubclass(cls, TrainerBase)
        assert cls.create_model_card is TrainerBase.create_model_card
        assert "method_info" in cls.__dict__ and cls._paper["citation"].startswith("@")
        assert "hf-salt" in cls._tag_names
    assert SALTTrainer._paper["url"].endswith("2410.18779")
    assert StepByStepTrainer._paper["url"].endswith("2305.02301")
