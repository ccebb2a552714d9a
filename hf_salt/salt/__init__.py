"""SALT: a small teacher distils into a larger student early in pre-training (Rawat et al. 2024, arXiv 2410.18779).

`config.py` holds `SALTConfig` (TrainingArguments + the KD settings), `trainer.py` the `SALTTrainer`,
`losses.py` the chunked KD divergences computed from hidden states, `schedules.py` the KD-weight decay and
its checkpointed callback. See docs/salt.md.
"""

from hf_salt.salt.config import SALTConfig
from hf_salt.salt.losses import Divergence, fused_kd_loss, register_divergence
from hf_salt.salt.schedules import KDSchedule, KDScheduleCallback, KDState, kd_weight_at, register_schedule
from hf_salt.salt.trainer import SALTTrainer

__all__ = [
    "Divergence",
    "KDSchedule",
    "KDScheduleCallback",
    "KDState",
    "SALTConfig",
    "SALTTrainer",
    "fused_kd_loss",
    "kd_weight_at",
    "register_divergence",
    "register_schedule",
]
