"""`hf-salt benchmark`: the reproduction benchmark (`hf_salt.experiments.benchmark`) from the command line.

`hf-salt benchmark --config benchmarks/configs/cpu.yaml` writes into the run's `output_dir`; the shipped
`benchmarks/RESULTS.md` and `benchmarks/reproduction_<label>.{md,png}` change only with
`--report_dir benchmarks --results_md benchmarks/RESULTS.md`.
"""

from __future__ import annotations

from hf_salt.cli.parser import Command
from hf_salt.experiments import benchmark

COMMAND = Command([benchmark.BenchmarkConfig], benchmark.run, description=benchmark.__doc__)
