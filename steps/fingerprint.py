"""The code a step's result depends on, as one content hash (the step-reuse key's code part).

In: a step name and the project directory as it is on disk (committed or not). Out: a sha256
hex digest over the project files that shape every step's environment and command
(``MLproject``, ``python_env.yaml``, ``requirements.lock``) and the step's own module plus
every ``steps`` module it imports, directly or not. Written by every step run as the tag
``pipeline.code_hash``; ``main`` reuses a finished run only when it matches.

Editing README.md, docs/ or tests/ changes no hash; editing ``steps/train.py`` changes the
hash of train (and of any step that imports it), not of load_data or preprocess. The work
tree is read as it is, so a dirty tree gets a correct key instead of no reuse at all.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from steps import config

PACKAGE = "steps"
# What every entry point runs under: its command line, its Python and its packages.
PROJECT_FILES: tuple[str, ...] = ("MLproject", "python_env.yaml", "requirements.lock")


# --- pure core ----------------------------------------------------------------------------
def imported_modules(source: str) -> set[str]:
    """Names of ``steps`` modules a module imports anywhere (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(f"{PACKAGE}."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith(f"{PACKAGE}.")
            )
    return found


def module_closure(entry: str, sources: dict[str, str]) -> list[str]:
    """``entry`` and every module it reaches through imports, sorted; unknown names skipped."""
    seen: set[str] = set()
    todo = [entry, "__init__"]
    while todo:
        name = todo.pop()
        if name in seen or name not in sources:
            continue
        seen.add(name)
        todo.extend(imported_modules(sources[name]))
    return sorted(seen)


def digest(parts: list[tuple[str, bytes]]) -> str:
    """sha256 over (name, content) pairs; names keep a moved file from hashing the same."""
    h = hashlib.sha256()
    for name, content in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


# --- file I/O -----------------------------------------------------------------------------
def code_hash(step: str, root: Path = config.PROJECT_ROOT) -> str:
    package = root / PACKAGE
    sources = {path.stem: path.read_text() for path in package.glob("*.py")}
    parts = [
        (f"{PACKAGE}/{name}.py", sources[name].encode()) for name in module_closure(step, sources)
    ]
    parts += [
        (name, (root / name).read_bytes()) for name in PROJECT_FILES if (root / name).exists()
    ]
    return digest(parts)
