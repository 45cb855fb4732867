"""The shape of zinit.py, read as text and as an ast (STYLE sections 1 and 4).

Banners are numbered in order and match the module docstring's map; top-level
imports are standard library only; the client half (sections 1-10) never imports
gevent, psutil or ssl; no section uses a name defined below it; `__all__` is real.
"""

from __future__ import annotations

import ast
import re
import sys

import pytest
from conftest import ZINIT_PY

import zinit

BANNER = re.compile(r"# ==== (\d+)\. (\S.*?) =+$")
MAP_ENTRY = re.compile(r"^\s*(\d+)\. (\S+(?: \S+)*?)\s{2,}\S")
#: Modules that must never load on the client path (SPEC section 1, STYLE section 4).
HEAVY = {"gevent", "psutil", "greenlet", "ssl"}
#: Modules that pull in ssl, or that a patcher replaces, and so stay out of the top level.
NOT_AT_TOP = HEAVY | {"asyncio", "http", "urllib", "tomllib"}


@pytest.fixture(scope="module")
def source() -> str:
    with open(ZINIT_PY, encoding="utf-8") as stream:
        return stream.read()


@pytest.fixture(scope="module")
def tree(source) -> ast.Module:
    return ast.parse(source)


@pytest.fixture(scope="module")
def banners(source) -> list[tuple[int, int, str]]:
    """(line number, section number, title) of each banner, in file order."""
    found = []
    for line_number, line in enumerate(source.splitlines(), 1):
        if line.startswith("# ===="):
            match = BANNER.fullmatch(line)
            assert match, f"line {line_number}: malformed banner {line!r}"
            found.append((line_number, int(match[1]), match[2]))
    return found


def normalise(title: str) -> str:
    return re.sub(r"[^a-z0-9]", "", title.lower())


def section_at(banners, line: int) -> int:
    """The section number that holds ``line`` (0 before the first banner)."""
    number = 0
    for start, section, _ in banners:
        if start <= line:
            number = section
    return number


def test_banners_are_numbered_in_order(banners, source):
    assert banners, "no banners found"
    assert [number for _, number, _ in banners] == list(range(1, len(banners) + 1))
    widths = {len(source.splitlines()[line - 1]) for line, _, _ in banners}
    assert len(widths) == 1 and max(widths) <= 79, widths


def test_banners_match_the_docstring_map(banners, tree):
    docstring = ast.get_docstring(tree)
    assert docstring and "Section map" in docstring
    entries = [
        (int(match[1]), match[2])
        for line in docstring.split("Section map", 1)[1].splitlines()
        if (match := MAP_ENTRY.match(line))
    ]
    assert [number for number, _ in entries] == [number for _, number, _ in banners]
    mismatched = [
        (number, mapped, title)
        for (number, mapped), (_, _, title) in zip(entries, banners, strict=True)
        if normalise(mapped) != normalise(title)
    ]
    assert mismatched == []


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed at import time: the module body, and its if/try blocks."""
    found = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
    return found


def imported_roots(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [(node.module or "").split(".")[0]]
    return [alias.name.split(".")[0] for alias in node.names]


def test_top_level_imports_are_stdlib_only(tree):
    """Module-level imports are standard-library modules, and none of the heavy ones."""
    roots = [root for node in module_level_imports(tree) for root in imported_roots(node)]
    assert roots, "no imports found"
    not_stdlib = [root for root in roots if root not in sys.stdlib_module_names]
    assert not_stdlib == []
    assert sorted(set(roots) & NOT_AT_TOP) == []


def test_top_level_imports_bind_modules_not_names(tree):
    """`import socket`, never `from socket import socket`: a name bound at import time
    would escape any later patching (only __future__, typing and collections.abc may
    be imported from)."""
    allowed = {"__future__", "typing", "collections.abc"}
    offenders = [
        (node.lineno, node.module)
        for node in module_level_imports(tree)
        if isinstance(node, ast.ImportFrom) and node.module not in allowed
    ]
    assert offenders == []


def test_client_half_never_imports_gevent_psutil_or_ssl(tree, banners):
    """Sections 1-10 import no gevent, psutil or ssl, not even inside a function."""
    daemon_start = next(line for line, number, _ in banners if number == 11)
    offenders = [
        (node.lineno, root)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom) and node.lineno < daemon_start
        for root in imported_roots(node)
        if root in HEAVY
    ]
    assert offenders == []


def top_level_definitions(tree: ast.Module) -> dict[str, int]:
    """Each module-level name and the line that defines it."""
    defined: dict[str, int] = {}
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        for name in names:
            defined.setdefault(name, node.lineno)
    return defined


def annotation_nodes(tree: ast.Module) -> set[int]:
    """ids of every node inside an annotation (not evaluated: `from __future__ import
    annotations`)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def test_no_section_uses_a_name_defined_below_it(tree, banners):
    """Each section uses only the sections above it (main dispatch, the last, excepted)."""
    defined = top_level_definitions(tree)
    in_annotation = annotation_nodes(tree)
    last = banners[-1][1]
    offenders = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name) or id(node) in in_annotation:
            continue
        if node.id not in defined:
            continue
        user = section_at(banners, node.lineno)
        owner = section_at(banners, defined[node.id])
        if owner > user and owner != last:
            offenders.add((node.lineno, node.id, f"section {user} uses section {owner}"))
    assert sorted(offenders) == []


def test_all_names_exist(tree):
    assert len(zinit.__all__) == len(set(zinit.__all__)), "a name is listed twice"
    missing = [name for name in zinit.__all__ if not hasattr(zinit, name)]
    assert missing == []
    assert all(not name.startswith("_") for name in zinit.__all__)
    defined = top_level_definitions(tree)
    assert [name for name in zinit.__all__ if name not in defined] == []


def test_all_lists_the_public_api():
    """The clients, the errors and the entry points are exported."""
    for name in (
        "ZinitClient", "AsyncZinitClient", "ZinitError", "UnitNotFound", "DaemonUnavailable",
        "RpcError", "State", "main", "server_main", "pid1_main",
    ):  # fmt: skip
        assert name in zinit.__all__, name
