#!/usr/bin/env bash
# One-command set-up of a CPU development environment for mmvmamba.
#
#   bash tools/setup_env.sh            # creates ./.venv and installs everything pinned in requirements.txt
#
# mmcv 2.1.0 has no wheel on PyPI, so it is built from source with its ops once and the wheel is cached
# outside the checkout (MMVMAMBA_CACHE, default ~/.cache/mmvmamba); later runs reuse it and take about a minute.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MMVMAMBA_VENV:-$repo/.venv}
cache=${MMVMAMBA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmvmamba}
python=${PYTHON:-python3.11}
wheels=$cache/wheels
mkdir -p "$wheels"

log() { printf '[setup_env] %s\n' "$*"; }
# This machine's pip configuration names optional local indexes that may not exist; pip warns once per package.
pip() { "$py" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv with $python"
  "$python" -m venv "$venv"
fi
py=$venv/bin/python
pin() { grep -E "^$1==" "$repo/requirements.txt" | sed 's/[[:space:]]*#.*//'; }

# Build tools and torch first: mmcv's setup.py compiles its ops only when torch is already importable.
pip install -q pip==26.3
pip install -q "$(pin setuptools)" wheel "$(pin ninja)" "$(pin numpy)" "$(pin torch)"

mmcv_pin=$(pin mmcv)
mmcv_version=${mmcv_pin#mmcv==}
if ! ls "$wheels"/mmcv-"$mmcv_version"-*.whl >/dev/null 2>&1; then
  log "building $mmcv_pin with its CPU ops (about 6 minutes on 2 cores); cached in $wheels"
  build=$(mktemp -d)
  # setuptools replaces (does not extend) CFLAGS, so these flags are the whole set: small and fast to build.
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} CFLAGS="-O2 -g0 -DNDEBUG" CXXFLAGS="-O2 -g0 -DNDEBUG" \
    pip wheel -q --no-build-isolation --no-deps --no-cache-dir "$mmcv_pin" -w "$build"
  mv "$build"/mmcv-*.whl "$wheels"/
  rm -rf "$build"
else
  log "using cached mmcv wheel from $wheels"
fi

pip install -q --find-links "$wheels" --only-binary mmcv -r "$repo/requirements.txt"
# setuptools warns about every editable install (a package folder in the working directory could shadow it).
PYTHONWARNINGS='ignore:Editable installation' pip install -q --no-deps --no-build-isolation -e "$repo"

log "checking the installation"
"$py" - <<'PY'
import torch
import mmcv.ops  # noqa: F401  (fails if mmcv was built without its ops)
from mmcv.ops import nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
keep = nms(boxes, torch.tensor([0.9, 0.8]), 0.5)[1]
assert keep.tolist() == [0], keep
import mmdet, mmseg, mmseg.utils, mmengine, mmvmamba, mmvmamba_kernels  # noqa: E401,F401
print(f'torch {torch.__version__}, mmcv {mmcv.__version__}, mmengine {mmengine.__version__}, '
      f'mmdet {mmdet.__version__}, mmseg {mmseg.__version__}: ok')
PY
log "done: activate with 'source $venv/bin/activate'"
