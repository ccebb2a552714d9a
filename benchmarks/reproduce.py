"""Reproduction benchmark: does SALT / SALT_DS / HyperCloning make pre-training cheaper, measured?

A thin driver of the package's engine (``hf_salt.experiments.benchmark``): the same as ``hf-salt benchmark``:
``python benchmarks/reproduce.py --config benchmarks/configs/cpu.yaml``. A run writes into its own ``output_dir``;
``--report_dir benchmarks --results_md benchmarks/RESULTS.md`` refreshes the shipped results. See
``docs/reproduction.md``.
"""

from __future__ import annotations

import sys

from hf_salt.cli.benchmark import COMMAND

if __name__ == "__main__":
    sys.exit(COMMAND.main(sys.argv[1:], prog="reproduce.py"))
