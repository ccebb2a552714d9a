"""Rewrite a wheel without the members hf-salt never loads, so the carried wheels fit the 64 MiB that travel.

pyarrow's wheel (~43 MB) holds Arrow Flight, C++ headers, Cython sources, tests and two extra copies of
libarrow_python; `datasets` needs none of them (every remaining extension finds the libraries it links). The rewritten wheel keeps its name; RECORD loses the dropped lines, so pip installs it as usual.

    python benchmarks/gpu/slim_wheel.py .whl/pyarrow-*.whl
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import zipfile
from pathlib import Path

DROP = {
    "pyarrow": [
        "pyarrow/libarrow_flight.so*",
        "pyarrow/_flight.*.so",
        "pyarrow/libarrow_python_flight.so*",
        # two copies of libarrow_python under the names one links against (the extensions need .so.<major>)
        "pyarrow/libarrow_python.so",
        "pyarrow/libarrow_python.so.*.*.*",
        "pyarrow/include/*",
        "pyarrow/src/*",
        "pyarrow/tests/*",
        "pyarrow/*.pyx",
        "pyarrow/*.pxd",
        "pyarrow/*.pxi",
        "pyarrow/includes/*",
    ],
}


def slim(path: Path, patterns: list[str]) -> tuple[int, int]:
    """Drop the members matching ``patterns``; returns (bytes before, bytes after)."""
    before = path.stat().st_size
    tmp = path.with_suffix(".slim.tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {
            i.filename for i in src.infolist() if any(fnmatch.fnmatch(i.filename, p) for p in patterns)
        }
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(ln for ln in lines if ln.split(",", 1)[0] not in dropped).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheels", nargs="+", type=Path)
    a = p.parse_args(argv)
    for wheel in a.wheels:
        dist = wheel.name.split("-", 1)[0].lower()
        if dist not in DROP:
            print(f"{wheel.name}: nothing to drop", file=sys.stderr)
            continue
        before, after = slim(wheel, DROP[dist])
        print(f"{wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
