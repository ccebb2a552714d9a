#!/usr/bin/env bash
# On a CPU machine with PyPI access: download the wheels the GPU machine lacks into .whl/ (ignored by git), slim
# pyarrow's, and check that the tree that travels (tracked + untracked files, .whl/ included) stays under 64 MiB.
#
#   bash benchmarks/gpu/prepare.sh
#
# The GPU machine has Python 3.12, torch, transformers, accelerate, peft, triton, numpy, matplotlib and pytest, but
# not liger-kernel or datasets. datasets 4.4.1 is the newest whose pyarrow (>= 21) fits: pyarrow 21 is 43 MB
# (31 MB slimmed), 24+ is 49 MB and more. --no-deps everywhere: only what is listed travels.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.whl
PY=${PYTHON:-python3}
rm -rf "$DEST" && mkdir -p "$DEST"
WHEELS=(
  liger-kernel==0.8.5
  datasets==4.4.1 pyarrow==21.0.0 pandas==2.2.3
  dill==0.4.0 multiprocess==0.70.18 xxhash==3.6.0 pytz==2025.2 tzdata==2025.2
  requests==2.32.5 urllib3==2.5.0 charset-normalizer==3.4.4 idna==3.11 certifi==2025.10.5
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
"$PY" benchmarks/gpu/slim_wheel.py "$DEST"/pyarrow-*.whl
# what travels: the files git would carry (tracked and untracked, not ignored) plus .whl/
"$PY" - "$DEST" <<'PYEOF'
import subprocess, sys
from pathlib import Path

files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True)
tree = sum(Path(f).stat().st_size for f in files.stdout.decode().split("\0") if f and Path(f).is_file())
wheels = sum(p.stat().st_size for p in Path(sys.argv[1]).glob("*.whl"))
mib = 2**20
print(f"wheels {wheels / mib:.1f} MiB + tree {tree / mib:.1f} MiB = {(wheels + tree) / mib:.1f} MiB (limit 64 MiB)")
if wheels + tree > 64 * mib:
    sys.exit("too big to travel: shrink the tree, or leave datasets and its wheels out (parts tests, salt_ds and "
             "reproduce then fail for want of datasets)")
PYEOF
ls -1 "$DEST"
