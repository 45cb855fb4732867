#!/usr/bin/env bash
# Build dist/zinit.pyz: zinit.py and its dependencies in one self-contained shiv zipapp.
#
#   ./build_pyz.sh                          # for the building interpreter (python3, or $PYTHON)
#   PYTHON=python3.12 ./build_pyz.sh        # for another installed interpreter
#   ./build_pyz.sh --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64   # cross-build
#
# gevent and greenlet wheels are CPython-minor specific, so a .pyz runs only on the minor
# (and architecture) it was built for; the shebang pins that minor. For a cross-build pass
# both manylinux tags: newer gevent wheels are tagged manylinux_2_28 only, and with
# manylinux2014 alone pip silently picks an older release. Extra arguments go to pip.
set -euo pipefail

cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-dist/zinit.pyz}"

# The target minor: --python-version if given, else the building interpreter's.
target="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --python-version) target="${args[i + 1]:?--python-version needs a value}" ;;
        --python-version=*) target="${args[i]#*=}" ;;
    esac
done

# pip builds in the tree; remove its build/ and egg-info afterwards unless they were already here.
tidy=()
for d in build zinit.egg-info; do [[ -e $d ]] || tidy+=("$d"); done
tmp="$(mktemp -d "${TMPDIR:-/tmp}/zinit-pyz.XXXXXX")"
trap 'rm -rf "$tmp" "${tidy[@]}"' EXIT

# Use shiv from the building interpreter, or install it into a throwaway venv.
shiv=("$PYTHON" -m shiv)
if ! "$PYTHON" -c 'import shiv' 2>/dev/null; then
    echo "==> shiv not importable by $PYTHON: installing it into $tmp/venv"
    "$PYTHON" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install --disable-pip-version-check -q shiv
    shiv=("$tmp/venv/bin/python" -m shiv)
fi

# Native build: install the project directory. Cross-build: pip refuses to build source for
# a foreign target, so build zinit's (pure Python) wheel first and take only binary wheels.
src=(.)
if ((${#args[@]})); then
    "${shiv[0]}" -m pip wheel --disable-pip-version-check -q --no-deps -w "$tmp/wheel" .
    src=("$tmp"/wheel/zinit-*.whl --implementation cp --only-binary=:all:)
fi

mkdir -p "$(dirname "$OUT")"
echo "==> building $OUT for python$target"
"${shiv[@]}" -c zinit -o "$OUT" --reproducible --compressed --compile-pyc \
    -p "/usr/bin/env python$target" "${src[@]}" "${args[@]}"
ls -l "$OUT"
