"""What an interpreter of the venv does as it starts: MLflow's own ``mlflow run`` launcher too.

``make setup`` installs a ``.pth`` file into the venv (``python -m steps.infra.starthook
install``) that runs this file, standalone, whenever an interpreter of the venv starts. Two
things in MLflow's launcher are out of our code's reach, since the launcher runs before any
step does:

- **Refusals.** Our steps turn a 401/403 from the tracking server into one line
  (``steps.tracking.refusals.refusal``); the launcher looks up the experiment and creates the
  run first, and would print a Python traceback. ``sys.excepthook`` is set so that an uncaught
  MLflow error whose code is UNAUTHENTICATED or PERMISSION_DENIED (or whose cause is one) is
  printed as ``error: <refusal line>`` (exit code 1, as for any uncaught exception); every
  other exception keeps Python's own handling.
- **Start-up and exit of a launch of this project** (``mlflow run DIR …`` where DIR holds
  this project's ``steps``): with ``-e main --env-manager local``, this interpreter's step
  server (``steps.infra.forkserver``) is started at once, unless one answers, so that its
  imports overlap the launcher's own ~3 s instead of following them; the launcher is its
  holder. And any launch of this project freezes the heap at exit (``gc.freeze``, as our step
  processes do: ``steps.infra.processes.skip_exit_collection``), which spares the ~0.8 s
  CPython's final collections spend walking MLflow's imports. Other commands, other projects
  and other environment managers are left as they are.

In: nothing at start-up (standard library only; ``steps.tracking.refusals`` is imported only when a
refusal reaches the top, the step server is started as a process of its own). Out: ``install``
writes ``housing_start.pth`` into the running interpreter's site-packages (and removes the
``housing_refusals.pth`` of older set-ups); ``uninstall`` removes it. No MLflow run, no
other file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import TracebackType

PTH_NAME = "housing_start.pth"
# What older set-ups installed for the refusal hook alone.
LEGACY_PTH_NAMES = ("housing_refusals.pth",)
REFUSED_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
# Where this file sits below the project root: steps/infra/starthook.py.
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


# --- MLflow's launcher, when it launches this project ----------------------------------------
# `mlflow run` options that take a value (MLflow 3.x), short forms by their long name; any
# other option is a flag.
_SHORT = {"-e": "--entry-point", "-v": "--version", "-P": "--param-list", "-A": "--docker-args"}
_SHORT |= {"-b": "--backend", "-c": "--backend-config"}
_VALUED = frozenset(
    {
        *_SHORT.values(),
        *("--experiment-name", "--experiment-id", "--env-manager", "--storage-dir"),
        *("--run-id", "--run-name"),
    }
)
# A directory is this project when it holds the step server this hook starts.
_MARKER = ("steps", "infra", "forkserver.py")


class Launch:
    """An ``mlflow run`` of this project, as its command line says. (A plain class: this file
    runs as every interpreter of the venv starts, and ``dataclasses`` costs ~10 ms to import.)
    """

    def __init__(self, project: str, entry_point: str, env_manager: str | None) -> None:
        self.project = project
        self.entry_point = entry_point
        self.env_manager = env_manager  # None: MLflow picks (virtualenv, for python_env)

    def __repr__(self) -> str:
        return f"Launch({self.project!r}, {self.entry_point!r}, {self.env_manager!r})"

    @property
    def served(self) -> bool:
        """Does main run in this interpreter, where a step server started now can serve it?"""
        return self.entry_point == "main" and self.env_manager == "local"


def launch_of(argv: list[str]) -> Launch | None:
    """The launch ``argv`` (``sys.orig_argv``) is, when it is ``mlflow run`` (as a console
    script or ``-m mlflow``) of a local directory holding this project; else None."""
    rest = _mlflow_command(argv[1:])
    if not rest or rest[0] != "run":
        return None
    options: dict[str, str] = {}
    uri = None
    tokens = iter(rest[1:])
    for token in tokens:
        if token.startswith("--"):
            name, attached, value = token.partition("=")
        elif token[:2] in _SHORT:  # -e main, or -emain
            name, attached, value = _SHORT[token[:2]], token[2:], token[2:]
        elif token.startswith("-"):
            continue
        else:
            uri = token if uri is None else uri
            continue
        if name in _VALUED:
            options[name] = value if attached else next(tokens, "")
    if uri is None or not os.path.isfile(os.path.join(uri, *_MARKER)):
        return None
    return Launch(
        project=os.path.abspath(uri),
        entry_point=options.get("--entry-point", "main"),
        env_manager=options.get("--env-manager"),
    )


def _mlflow_command(args: list[str]) -> list[str] | None:
    """The arguments after ``mlflow`` when these interpreter arguments run MLflow's CLI."""
    index = 0
    while index < len(args):
        token = args[index]
        if token in ("-X", "-W"):  # an interpreter option and its value
            index += 2
        elif token == "-m":
            return args[index + 2 :] if args[index + 1 : index + 2] == ["mlflow"] else None
        elif token.startswith("-"):
            index += 1
        else:
            return args[index + 1 :] if os.path.basename(token) == "mlflow" else None
    return None


def _on_launch(launch: Launch) -> None:
    import atexit
    import gc

    # registered before MLflow's own exit hooks, so it runs after them
    atexit.register(gc.freeze)
    if launch.served and sys.platform.startswith("linux"):
        import subprocess

        # A process of its own checks for a server and starts one: nothing of ours is imported
        # into MLflow's launcher, and the launcher waits for nothing.
        subprocess.Popen(
            [sys.executable, "-m", "steps.infra.forkserver", "start", str(os.getpid())],
            cwd=launch.project,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def pth_line(path: str) -> str:
    """The .pth line that runs ``path`` (this file) at start-up, if it still exists."""
    return (
        f"import os, sys; p = {path!r}; os.path.isfile(p) and exec(compile(open(p).read(), p, "
        '"exec"), {"__file__": p, "__name__": "housing_start_hook"})\n'
    )


def _site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


if __name__ == "housing_start_hook":  # run by the .pth line at interpreter start
    sys.excepthook = _refusal_hook
    try:  # a speed-up: nothing here may keep the interpreter from starting
        _launch = launch_of(list(getattr(sys, "orig_argv", ())))
        if _launch is not None:
            _on_launch(_launch)
    except Exception:
        pass
elif __name__ == "__main__":
    target = os.path.join(_site_packages(), PTH_NAME)
    if sys.argv[1:] in (["install"], ["uninstall"]):
        for legacy in LEGACY_PTH_NAMES:  # two hooks would run the refusal hook twice
            if os.path.exists(os.path.join(_site_packages(), legacy)):
                os.remove(os.path.join(_site_packages(), legacy))
    if sys.argv[1:] == ["install"]:
        with open(target, "w") as out:
            out.write(pth_line(os.path.abspath(__file__)))
    elif sys.argv[1:] == ["uninstall"]:
        if os.path.exists(target):
            os.remove(target)
    else:
        sys.exit("usage: python -m steps.infra.starthook install|uninstall")
