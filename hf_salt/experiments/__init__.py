"""Experiments: one teacher, then the same student under several arms, compared on equal terms.

- :mod:`~hf_salt.experiments.arms`: the arm registry (``register_arm``, ``Arm``, ``ArmSetup``, ``ArmContext``);
- :mod:`~hf_salt.experiments.engine`: the runner (data order and timing hooks, teacher and arm training);
- :mod:`~hf_salt.experiments.demo`: ``hf-salt demo`` (one seed, models saved, table and plot);
- :mod:`~hf_salt.experiments.benchmark`: ``hf-salt benchmark`` (seeds, resume, workers, reports);
- :mod:`~hf_salt.experiments.metrics` and :mod:`~hf_salt.experiments.report`: crossings, spreads, tables, plots.
"""

from hf_salt.experiments.arms import ARMS, Arm, ArmContext, ArmSetup, register_arm, resolve_arms
from hf_salt.experiments.config import ExperimentConfig, SharedSettings
from hf_salt.experiments.demo import format_table, plot_curves, run_experiment, steps_to_reach
from hf_salt.experiments.engine import (
    CurveRecorder,
    Engine,
    QuietProgress,
    ordered_indices,
    quiet_progress,
)
from hf_salt.experiments.metrics import first_crossing

__all__ = [
    "ARMS",
    "Arm",
    "ArmContext",
    "ArmSetup",
    "CurveRecorder",
    "Engine",
    "ExperimentConfig",
    "QuietProgress",
    "SharedSettings",
    "first_crossing",
    "format_table",
    "ordered_indices",
    "plot_curves",
    "quiet_progress",
    "register_arm",
    "resolve_arms",
    "run_experiment",
    "steps_to_reach",
]
