"""`hf-salt benchmark`: the reproduction benchmark (`benchmarks/reproduce.py`) from the command line.

The benchmark lives in the repository's `benchmarks/` folder (it is a measurement, not library code), so this
command needs a source checkout (`pip install -e .`); it loads that file and runs it with the same options:
`hf-salt benchmark --config benchmarks/configs/cpu.yaml`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hf_salt.cli.parser import Command

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce.py"


def load_reproduce(path: Path = SCRIPT) -> ModuleType:
    """Import `benchmarks/reproduce.py` as a module (it is not part of the installed package)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: `hf-salt benchmark` runs the repository's benchmarks/reproduce.py, so it "
            "needs a source checkout installed with `pip install -e .`."
        )
    name = "hf_salt_benchmarks_reproduce"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses need the module registered while it executes
    spec.loader.exec_module(module)
    return module


_reproduce = load_reproduce()
COMMAND = Command([_reproduce.BenchmarkConfig], _reproduce.run, description=_reproduce.__doc__)
