"""Distilling step-by-step (Hsieh et al. 2023, arXiv 2305.02301): a small model learns labels and an LLM's rationales.

`data.py` loads the task data (shipped CQA/SVAMP, local files), `rationales.py` generates rationales with a
local LLM, `collator.py` builds the two prefixed tasks, `config.py`/`trainer.py` hold `StepByStepConfig` and
`StepByStepTrainer`, `metrics.py` the label metrics and the safe arithmetic evaluator. See docs/step_by_step.md.
"""

from hf_salt.step_by_step.collator import StepByStepCollator
from hf_salt.step_by_step.config import StepByStepConfig
from hf_salt.step_by_step.data import load_step_by_step
from hf_salt.step_by_step.metrics import safe_arithmetic
from hf_salt.step_by_step.rationales import generate_rationales
from hf_salt.step_by_step.trainer import StepByStepTrainer

__all__ = [
    "StepByStepCollator",
    "StepByStepConfig",
    "StepByStepTrainer",
    "generate_rationales",
    "load_step_by_step",
    "safe_arithmetic",
]
