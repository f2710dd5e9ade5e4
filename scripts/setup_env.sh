#!/usr/bin/env bash
# Create .venv with Python 3.12 and install the pinned CPU-side stack from PyPI.
# Usage: scripts/setup_env.sh [VENV_DIR]
set -euo pipefail

venv=${1:-.venv}
nvrx_version=0.6.0

find_python312() {
    local candidate
    for candidate in "${PYTHON:-}" python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python \
        /usr/local/bin/python3.12 /usr/bin/python3.12; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! python=$(find_python312); then
    cat >&2 <<'MSG'
error: Python 3.12 not found (Megatron-Bridge 0.6.2 needs Python >=3.12,<3.13).
Install it, then re-run `make setup`, for example:
  - Debian/Ubuntu: apt-get install python3.12 python3.12-venv   (where the distribution has it)
  - pyenv:         pyenv install 3.12
  - or point to one: make setup PYTHON=/path/to/python3.12
MSG
    exit 1
fi

echo "Using $python ($("$python" --version))"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet pip==25.3

# Full lock, no resolution: the install is the same on every machine.
"${pip[@]}" install --no-deps -r requirements.txt

# nvidia-resiliency-ext (imported unconditionally by megatron.bridge.training.pretrain and
# megatron-core's nvrx checkpoint strategy): 0.5+ wheels are tagged manylinux_2_39 although
# their one shared object needs only GLIBC_2.32, so pip on glibc 2.36 (Debian 12) would fall
# back to 0.4.1, which breaks megatron-core. Install the pinned wheel by platform tag.
site_packages=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"${pip[@]}" install --quiet --no-deps --upgrade --only-binary=:all: \
    --platform manylinux_2_39_x86_64 --python-version 3.12 --implementation cp \
    --target "$site_packages" "nvidia-resiliency-ext==$nvrx_version"

"${pip[@]}" install --quiet --no-deps --no-build-isolation -e .
"$venv/bin/python" -c 'import megatron.core, nemo_run, lucie_nemo; print("stack OK: megatron-core", megatron.core.__version__)' 2>/dev/null
