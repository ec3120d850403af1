"""The code a step's result depends on, as one content hash (the step-reuse key's code part).

In: a step name and the project directory as it is on disk (committed or not). Out: a sha256
hex digest over the project files that shape every step's environment and command
(``MLproject``, ``python_env.yaml``, ``requirements.lock``) and the step's own module plus
every ``steps`` module it imports, directly or not, in any subpackage (``steps/**/*.py``),
with the ``__init__.py`` of every package on the way. Written by every step run as the tag
``pipeline.code_hash``; ``main`` reuses a finished run only when it matches.

Modules are keyed by their dotted path below ``steps`` (``train``, ``ml.gate``,
``tracking.__init__``). Editing README.md, docs/ or tests/ changes no hash; editing
``steps/train.py`` changes the hash of train (and of any step that imports it), not of
load_data or preprocess; editing ``steps/ml/gate.py`` changes every step that imports it.
The work tree is read as it is, so a dirty tree gets a correct key instead of no reuse at all.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from steps import config

PACKAGE = "steps"
INIT = "__init__"
# What every entry point runs under: its command line, its Python and its packages.
PROJECT_FILES: tuple[str, ...] = ("MLproject", "python_env.yaml", "requirements.lock")


# --- pure core ----------------------------------------------------------------------------
def _imported_names(source: str) -> set[str]:
    """Every dotted name below ``steps`` an import could mean, without the ``steps.`` prefix:
    ``from steps.x import y`` gives ``x`` and ``x.y`` (y may be a module or a name in x)."""
    found: set[str] = set()
    prefix = f"{PACKAGE}."
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found.update(alias.name for alias in node.names)
            elif node.module.startswith(prefix):
                base = node.module[len(prefix) :]
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name[len(prefix) :] for alias in node.names if alias.name.startswith(prefix)
            )
    return found


def imported_modules(source: str, known: set[str] | None = None) -> set[str]:
    """Dotted names (relative to ``steps``) of the modules a module imports anywhere (lazy
    imports included). With ``known`` (the modules that exist), a ``from steps.x import y``
    counts ``x.y`` only if it is a module, else ``x``; without it, both candidates."""
    names = _imported_names(source)
    if known is None:
        return names
    found: set[str] = set()
    for name in names:
        if name in known:
            found.add(name)
        elif f"{name}.{INIT}" in known:  # a package
            found.add(f"{name}.{INIT}")
        elif "." in name:  # ``from steps.x import y`` where y is a name in module x
            parent = name.rsplit(".", 1)[0]
            if parent in known:
                found.add(parent)
            elif f"{parent}.{INIT}" in known:
                found.add(f"{parent}.{INIT}")
    return found


def packages_on_the_way(module: str) -> list[str]:
    """The ``__init__`` modules Python runs to import ``module``: ``ml.gate`` →
    ``__init__``, ``ml.__init__``."""
    parts = module.split(".")[:-1]
    if parts and parts[-1] == INIT:
        parts = parts[:-1]
    return [INIT] + [".".join([*parts[: i + 1], INIT]) for i in range(len(parts))]


def module_closure(entry: str, sources: dict[str, str]) -> list[str]:
    """``entry`` and every module it reaches through imports (with each package's
    ``__init__`` on the way), sorted; unknown names skipped."""
    known = set(sources)
    seen: set[str] = set()
    todo = [entry, INIT]
    while todo:
        name = todo.pop()
        if name in seen or name not in sources:
            continue
        seen.add(name)
        todo.extend(packages_on_the_way(name))
        todo.extend(imported_modules(sources[name], known))
    return sorted(seen)


def module_name(path: Path, package: Path) -> str:
    """``steps/ml/gate.py`` → ``ml.gate``; ``steps/ml/__init__.py`` → ``ml.__init__``."""
    return ".".join(path.relative_to(package).with_suffix("").parts)


def digest(parts: list[tuple[str, bytes]]) -> str:
    """sha256 over (name, content) pairs; names keep a moved file from hashing the same."""
    h = hashlib.sha256()
    for name, content in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


# --- file I/O -----------------------------------------------------------------------------
def package_sources(root: Path = config.PROJECT_ROOT) -> dict[str, str]:
    """Every module of the ``steps`` package on disk, subpackages included, by dotted name."""
    package = root / PACKAGE
    return {module_name(path, package): path.read_text() for path in package.rglob("*.py")}


def module_path(name: str) -> str:
    """``ml.gate`` → ``steps/ml/gate.py``."""
    return f"{PACKAGE}/{name.replace('.', '/')}.py"


def code_hash(step: str, root: Path = config.PROJECT_ROOT) -> str:
    sources = package_sources(root)
    parts = [(module_path(name), sources[name].encode()) for name in module_closure(step, sources)]
    parts += [
        (name, (root / name).read_bytes()) for name in PROJECT_FILES if (root / name).exists()
    ]
    return digest(parts)
