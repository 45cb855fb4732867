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

# shiv's bootstrap unpacks the archive and costs ~30 ms on every call, but only the
# server needs what it unpacks (gevent's and psutil's C extensions). The CLI and
# zinit-pid1 use the standard library alone, so a new __main__.py imports zinit
# straight from the archive (zipimport, from a copy compiled by the target's own
# interpreter) and hands only the server to the bootstrap. They then work on a
# read-only or noexec cache as well. Without that interpreter here, zipimport would
# compile zinit.py at every call, slower than the bootstrap: shiv's entry stays.
compiler=""
if [[ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" == "$target" ]]; then
    compiler="$PYTHON"
elif "python$target" -c '' 2>/dev/null; then  # runs, not just on PATH (version shims)
    compiler="python$target"
fi
if [[ -z $compiler ]]; then
    echo "==> no python$target here to compile zinit: every program goes through shiv's bootstrap"
    ls -l "$OUT"
    exit 0
fi
echo "==> adding the direct entry for the CLI and zinit-pid1 (compiled by $compiler)"
"$compiler" - "$OUT" <<'PY'
import io
import os
import py_compile
import sys
import tempfile
import zipfile

out = sys.argv[1]
ENTRY = b"""\
# zinit.pyz entry: the server goes through shiv's bootstrap (which unpacks
# gevent and psutil); every other program runs straight from this archive.
import os
import sys

if sys.version_info < (3, 11):
    sys.stderr.write("zinit: needs Python 3.11 or later; this is %d.%d\\n" % sys.version_info[:2])
    sys.exit(1)
packages = sys.path[0] + "/site-packages"
sys.path.insert(0, packages)
import zinit

if zinit._program(sys.argv)[0] != "server":
    sys.exit(zinit.main())
sys.path.remove(packages)  # the unpacked copy holds what zipimport cannot load
import _bootstrap
from _bootstrap.environment import Environment

# Where shiv unpacks (its own reckoning: SHIV_ROOT, $VAR, the build's root, ~/.shiv).
# Not unpacked yet and no way to: one line, rather than its lock failing in a traceback.
with _bootstrap.current_zipfile() as archive:
    environment = Environment.from_json(archive.read("environment.json").decode())
    target = _bootstrap.cache_path(archive, environment.root, environment.build_id)
if not (target / "site-packages").exists():
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(target.parent, os.W_OK | os.X_OK) else "not writable"
    except OSError as error:
        problem = error.strerror
    if problem:
        sys.stderr.write(
            "zinit-server: cannot unpack gevent and psutil into %s (%s); set SHIV_ROOT to a "
            "writable, exec-allowed directory\\n" % (target.parent, problem)
        )
        sys.exit(1)
_bootstrap.bootstrap()
"""
with open(out, "rb") as stream:
    shebang = stream.readline()
source = zipfile.ZipFile(out)
with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "zinit.py"), "wb") as stream:
        stream.write(source.read("site-packages/zinit.py"))
    # Unchecked: the archive is built once and never edited, and checking the
    # source's hash would cost every call ~8 ms of inflating and hashing it.
    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    py_compile.compile(
        os.path.join(tmp, "zinit.py"),
        os.path.join(tmp, "zinit.pyc"),
        dfile="site-packages/zinit.py",
        doraise=True,
        invalidation_mode=mode,
    )
    with open(os.path.join(tmp, "zinit.pyc"), "rb") as stream:
        compiled = stream.read()
buffer = io.BytesIO()
buffer.write(shebang)
with zipfile.ZipFile(buffer, "w") as archive:
    for info in source.infolist():
        if "/tests/" in info.filename:
            # The dependencies' own test suites: 231 of 508 entries, which every
            # zipimport of the archive reads the directory of.
            continue
        data = ENTRY if info.filename == "__main__.py" else source.read(info)
        archive.writestr(info, data)
        if info.filename == "site-packages/zinit.py":
            pyc = zipfile.ZipInfo("site-packages/zinit.pyc", info.date_time)
            # Stored, not deflated: inflating it would cost each call ~2 ms.
            pyc.compress_type, pyc.external_attr = zipfile.ZIP_STORED, info.external_attr
            archive.writestr(pyc, compiled)
source.close()
with open(out, "wb") as stream:
    stream.write(buffer.getvalue())
PY
ls -l "$OUT"
