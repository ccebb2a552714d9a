"""SALT_DS: the small model picks the sequences the KD stage trains on (Rawat et al. 2024, arXiv 2410.18779).

`score_dataset` (offline, one teacher pass) -> `select` (top scores or a percentile band) ->
`SALTDSCollator` (pool during the KD stage, full set afterwards, resumable). See docs/salt_ds.md.
"""

from hf_salt.salt_ds.collator import CurriculumDataset, SALTDSCollator
from hf_salt.salt_ds.scoring import NO_LEARNABLE_SCORE, score_dataset
from hf_salt.salt_ds.selection import kd_budget, select

__all__ = [
    "CurriculumDataset",
    "NO_LEARNABLE_SCORE",
    "SALTDSCollator",
    "kd_budget",
    "score_dataset",
    "select",
]
