"""One line instead of a traceback when a tracking server refuses a command that is not ours.

Our steps turn a 401/403 from the tracking server into one line
(``steps.tracking.refusals.refusal``).
MLflow's own command line cannot: the ``mlflow run`` launcher looks up the experiment and
creates the run before any code of ours runs, and prints a Python traceback when the server
refuses. ``make setup`` installs a ``.pth`` file into the venv (``python -m steps.infra.refusalhook
install``) that runs this file, standalone, when an interpreter of the venv starts. It only
sets ``sys.excepthook``: an uncaught MLflow error whose code is UNAUTHENTICATED or
PERMISSION_DENIED (or whose cause is one) is printed as ``error: <refusal line>`` (exit code
1, as for any uncaught exception); every other exception keeps Python's own handling.

In: nothing at start-up (standard library only; ``steps.tracking.refusals`` is imported only when a
refusal reaches the top). Out: ``install`` writes ``housing_refusals.pth`` into the running
interpreter's site-packages; ``uninstall`` removes it. No MLflow run, no other file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import TracebackType

PTH_NAME = "housing_refusals.pth"
REFUSED_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
# Where this file sits below the project root: steps/infra/refusalhook.py.
PACKAGE_PATH = ("steps", "infra")


def project_root(hook_file: str) -> str:
    """The project root for this file: the folder that holds the ``steps`` package."""
    root = os.path.dirname(os.path.abspath(hook_file))
    for _ in PACKAGE_PATH:
        root = os.path.dirname(root)
    return root


def _refused(exc: BaseException | None) -> bool:
    while exc is not None:
        if getattr(exc, "error_code", None) in REFUSED_CODES:
            return True
        exc = exc.__cause__
    return False


def _refusal_hook(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
    _python_hook: Callable[..., object] = sys.excepthook,  # Python's own, or whatever was set
) -> None:
    if _refused(exc):
        line = None
        try:
            root = project_root(__file__)
            if root not in sys.path:
                sys.path.insert(0, root)
            from steps.tracking.refusals import refusal

            line = refusal(exc)
        except Exception:  # the traceback below is still better than nothing
            line = None
        if line:
            print(f"error: {line}", file=sys.stderr, flush=True)
            return
    _python_hook(exc_type, exc, tb)


def pth_line(path: str) -> str:
    """The .pth line that runs ``path`` (this file) at start-up, if it still exists."""
    return (
        f"import os, sys; p = {path!r}; os.path.isfile(p) and exec(compile(open(p).read(), p, "
        '"exec"), {"__file__": p, "__name__": "housing_refusal_hook"})\n'
    )


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


if __name__ == "housing_refusal_hook":  # run by the .pth line at interpreter start
    sys.excepthook = _refusal_hook
elif __name__ == "__main__":
    target = os.path.join(_site_packages(), PTH_NAME)
    if sys.argv[1:] == ["install"]:
        with open(target, "w") as out:
            out.write(pth_line(os.path.abspath(__file__)))
    elif sys.argv[1:] == ["uninstall"]:
        if os.path.exists(target):
            os.remove(target)
    else:
        sys.exit("usage: python -m steps.infra.refusalhook install|uninstall")
