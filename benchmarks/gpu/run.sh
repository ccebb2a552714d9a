#!/usr/bin/env bash
# On the GPU machine, from the repository root or anywhere: install the wheels carried in .whl/ (made by
# prepare.sh) into a private folder, then run every part of the suite. Arguments go to suite.py (--out DIR, --parts).
#
#   bash benchmarks/gpu/run.sh --out "$OUT"
set -uo pipefail
cd "$(dirname "$0")/../.."
SITE=${HF_SALT_SITE:-/tmp/hf-salt-site}
PYPATH=$PWD
if compgen -G ".whl/*.whl" > /dev/null; then
  t=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  echo "installed $(ls .whl/*.whl | wc -l) wheels into $SITE in $(( $(date +%s) - t ))s"
  PYPATH=$PWD:$SITE
fi
export PYTHONPATH=$PYPATH${PYTHONPATH:+:$PYTHONPATH}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python3 benchmarks/gpu/suite.py "$@"
