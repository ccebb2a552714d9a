"""SALT_DS: the small model picks the sequences the KD stage trains on (Rawat et al. 2024, arXiv 2410.18779).

`score_dataset` (offline, one teacher pass) -> `select` (top scores or a percentile band) ->
`SALTTrainer(..., salt_ds_pool=pool)` (pool during the KD stage, full set afterwards, resumable; the loader is
a `SALTDSSource` read by a `SALTDSSampler`). See docs/salt_ds.md.
"""

from hf_salt.salt_ds.sampler import SAMPLING_STRATEGIES, SALTDSPlan, SALTDSSampler, SALTDSSource
from hf_salt.salt_ds.scoring import NO_LEARNABLE_SCORE, score_dataset
from hf_salt.salt_ds.selection import kd_budget, select

__all__ = [
    "NO_LEARNABLE_SCORE",
    "SAMPLING_STRATEGIES",
    "SALTDSPlan",
    "SALTDSSampler",
    "SALTDSSource",
    "kd_budget",
    "score_dataset",
    "select",
]
