#!/usr/bin/env bash
# Sets up everything l4emu needs on a fresh Debian machine (run as root) and is
# cheap to re-run: Debian packages first (only the missing ones), then a venv in
# .venv with the project installed editable. Called by `make boot` / `make test`.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(python3 python3-venv python3-dev gcc curl openssl libseccomp2 graphviz)
APT_PACKAGES+=(e2fsprogs)  # mkfs.ext4, debugfs, e2fsck: per-task work-dir filesystems (kernel_model/host/workdirs.py)
# crypto_service key storage (docs/crypto_keystore.md): a software TPM 2.0 and its TSS
# (tpm2-pytss builds against libtss2-dev with pkg-config), a PKCS#11 token
APT_PACKAGES+=(swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config softhsm2)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing Debian packages (${missing[*]}); run as root to install them" >&2
    fi
fi

# The aarch64 HIL guest (QEMU, the arm64 package index, lava-common): hil/qemu/setup.sh, root only.
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    ./hil/qemu/setup.sh
fi

# The venv's interpreter: $PYTHON if given, else the distribution's /usr/bin/python3 when it is recent
# enough (Debian builds it with PGO and LTO: this code runs ~1.3x faster on it, and a task process
# starts several times faster, than on a plain build such as pyenv's python3 first on PATH), else python3.
supported() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    PY=python3
    if [ -x /usr/bin/python3 ] && supported /usr/bin/python3; then PY=/usr/bin/python3; fi
fi
stamp=.venv/.l4emu-installed
# a venv made from another interpreter (an older bootstrap chose python3 on PATH) is made again
if [ -x .venv/bin/python ] && [ "$(readlink -f .venv/bin/python)" != "$(readlink -f "$(command -v "$PY")")" ]; then
    echo "bootstrap: the venv's interpreter is $(readlink -f .venv/bin/python); making it again with $PY"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test,lint,keystore,est-ca,hil]'
    # atheris (make fuzz) only where a wheel exists for this Python: it is never built from source
    .venv/bin/python -m pip install -q --only-binary=:all: 'atheris>=2.3' \
        || echo "bootstrap: no atheris wheel for this Python; make fuzz runs only the hypothesis fuzzer"
    touch "$stamp"
fi
