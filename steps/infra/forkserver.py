"""A fork server for main's steps: import MLflow, pandas and scikit-learn once, not per step.

Every step is its own process (MLflow Projects starts ``python -m steps.<step>`` per child
run), and each spent 3–6 s of CPU importing the same libraries before any work. Under main,
``serve()`` imports them once and listens on Unix sockets (``config.FORKSERVER_ENV`` names
the first; main and load_data are served there, the other steps by a fork of the server on
the second). A step's ``python -m steps.<step>`` still starts as MLflow
starts it, but ``delegate()`` (called from ``steps/__init__``, before the step's own imports)
hands its argv, environment, working directory and stdin/stdout/stderr to the server, which
forks a worker that runs the step module as ``__main__`` with them. The started process
stays what MLflow watches: it forwards SIGINT/SIGTERM/SIGHUP to the worker and exits with
the worker's exit code, so runs, logs, cancellation and exit codes are as without the server.

When the socket does not answer, the interpreter differs, or the module is not a step,
``delegate()`` returns and the step runs in its own process as usual.

In: the socket path (``python -m steps.infra.forkserver serve <path>``; ``run COMMAND...`` runs a
command beside a server, as ``make run`` does). Out: nothing logged; the server exits when
its parent dies or sends SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator

from steps import config
from steps.infra import processes

# What each served module needs imported before it is forked (a fork that still had to import
# its libraries would only compete with the server importing them), in the order main runs
# them. Each server process imports its steps' needs once, a waiting request's needs first: a
# warm run, where only register runs, does not wait for the other steps' libraries.
_COMMON = ("mlflow", "mlflow.store.tracking.sqlalchemy_store")
NEEDS: dict[str, tuple[str, ...]] = {
    "steps.main": (*_COMMON, "mlflow.projects", "steps.main"),
    "steps.load_data": (
        *_COMMON,
        "pandera.pandas",
        "dvc_data.hashfile.build",
        "dvc.repo",
        "matplotlib.figure",
        "steps.load_data",
    ),
    "steps.preprocess": (*_COMMON, "skops.io", "steps.preprocess"),
    "steps.train": (
        *_COMMON,
        "skops.io",
        "lightgbm",
        "mlflow.sklearn",
        "mlflow.models.evaluation.default_evaluator",
        "matplotlib.figure",
        "matplotlib.backends.backend_agg",
        "steps.train",
    ),
    "steps.register": (
        *_COMMON,
        "skops.io",
        "mlflow.store.model_registry.sqlalchemy_store",
        "steps.register",
    ),
}
SERVED = tuple(NEEDS)
# Served by the server itself / by its fork (see serve), each importing only its steps' needs.
LIGHT = ("steps.main", "steps.load_data")
HEAVY = ("steps.preprocess", "steps.train", "steps.register")
HEAVY_SUFFIX = ".heavy"
_LENGTH = struct.Struct("!I")
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MAX_MESSAGE = 1 << 20


def _send(sock: socket.socket, payload: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(payload).encode()
    message = _LENGTH.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [message], fds)
    else:
        sock.sendall(message)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError("fork server connection closed")
        chunks += chunk
    return chunks


def _recv(sock: socket.socket) -> dict:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if size > MAX_MESSAGE:
        raise EOFError("fork server message too large")
    return json.loads(_recv_exact(sock, size))


def served_module(orig_argv: list[str]) -> str | None:
    """The step module of ``python [opts] -m <module> ...`` if it is one we serve."""
    if "-m" not in orig_argv:
        return None
    index = orig_argv.index("-m")
    module = orig_argv[index + 1] if index + 1 < len(orig_argv) else None
    return module if module in SERVED else None


# --- client: the process MLflow started -----------------------------------------------------
def delegate() -> None:
    """Run this ``python -m steps.<step>`` in a worker of the fork server and exit with its
    code; return (run here instead) when there is no usable server."""
    path = os.environ.get(config.FORKSERVER_ENV)
    module = served_module(list(getattr(sys, "orig_argv", [])))
    if not path or module is None:
        return
    # Our parent's death must still reach the worker (through us): see processes.die_with_parent.
    processes.die_with_parent()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path + HEAVY_SUFFIX if module in HEAVY else path)
        args = sys.orig_argv[sys.orig_argv.index("-m") + 2 :]
        request = {
            "module": module,
            "args": args,
            "env": dict(os.environ),
            "cwd": os.getcwd(),
            "executable": sys.executable,
            "pid": os.getpid(),
        }
        sys.stdout.flush()
        sys.stderr.flush()
        _send(sock, request, [0, 1, 2])
        reply = _recv(sock)
    except (OSError, EOFError, ValueError):
        sock.close()
        return
    if "pid" not in reply:  # refused: run here
        sock.close()
        return
    worker = int(reply["pid"])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    try:
        code = int(_recv(sock).get("exit", 1))
    except (OSError, EOFError, ValueError):
        code = 1  # the worker died without a word (SIGKILL)
    os._exit(code)


# --- server ---------------------------------------------------------------------------------
def _run_worker(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked worker: become the step's process, run it, report its exit code."""
    import atexit
    import runpy
    import threading

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setpgid(0, 0)  # group signals reach the client, which forwards them once
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    # The server's streams were buffered for its own stdout; the step's may be a terminal.
    sys.stdout.reconfigure(
        line_buffering=os.isatty(1), write_through=bool(request["env"].get("PYTHONUNBUFFERED"))
    )
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]
    module = request["module"]
    sys.modules.pop(module, None)  # runs afresh as __main__, as `python -m` would
    sys.argv = [module, *request["args"]]
    # the process MLflow started, which waits for us (processes.client_parent_pid)
    processes.set_client_pid(int(request["pid"]))
    _send(conn, {"pid": os.getpid()})

    def client_gone() -> None:
        # The client exits only after our exit code; EOF earlier means it was killed.
        with contextlib.suppress(OSError):
            conn.recv(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=client_gone, daemon=True).start()
    code: int = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # nothing may skip the _exit below
            signal.signal(signum, signal.SIG_IGN)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            _send(conn, {"exit": code})
        finally:
            os._exit(code)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]] | None:
    try:
        message, fds, _flags, _addr = socket.recv_fds(conn, _LENGTH.size + MAX_MESSAGE, 3)
        (size,) = _LENGTH.unpack(message[: _LENGTH.size])
        data = message[_LENGTH.size :]
        if len(data) < size:
            data += _recv_exact(conn, size - len(data))
        return json.loads(data), fds
    except (OSError, EOFError, ValueError, struct.error):
        conn.close()
        return None


def _serve_one(listener: socket.socket, conn: socket.socket, request: dict, fds: list[int]) -> None:
    """Fork the worker of one request (or refuse it: the client then runs the step itself)."""
    if request.get("executable") != sys.executable or len(fds) != 3:
        with contextlib.suppress(OSError):
            _send(conn, {"refused": "not served here"})
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            try:
                listener.close()
                _run_worker(conn, request, fds)
            finally:
                os._exit(1)  # a worker never returns to the accept loop
    conn.close()
    for fd in fds:
        os.close(fd)


def _bind(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)  # clients queue here while we import
    return listener


def serve(path: str) -> None:
    """Import MLflow and the tracking store, then split in two: this process serves
    ``LIGHT`` on ``path`` and a fork of it serves ``HEAVY`` on ``path + HEAVY_SUFFIX``, each
    importing its steps' needs and forking one worker per request as soon as that step's
    imports are done, until told to stop. (One process would hold main up while it imports
    skops, whose start-up lists every scikit-learn estimator for ~2.5 s.) Nothing here may
    compute: OpenMP (LightGBM) does not survive a fork once it has started threads."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # main decides; a Ctrl-C is for it
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers report through their sockets
    processes.die_with_parent()
    light, heavy = _bind(path), _bind(path + HEAVY_SUFFIX)
    for name in _COMMON:
        with contextlib.suppress(Exception):  # the step will report it
            importlib.import_module(name)
    if os.fork() == 0:
        light.close()
        processes.die_with_parent()
        _serve_loop(heavy, HEAVY)
    heavy.close()
    _serve_loop(light, LIGHT)


def _serve_loop(listener: socket.socket, modules: tuple[str, ...]) -> None:
    import importlib

    preload = tuple(dict.fromkeys(name for module in modules for name in NEEDS[module]))
    imported: set[str] = set(_COMMON)
    waiting: list[tuple[socket.socket, dict, list[int]]] = []
    while True:
        for item in list(waiting):
            if set(NEEDS.get(item[1].get("module"), ())) <= imported:
                waiting.remove(item)
                _serve_one(listener, *item)
        missing = [m for m in preload if m not in imported]
        for item in waiting:  # first what a waiting step needs
            missing = [m for m in NEEDS.get(item[1]["module"], ()) if m not in imported] + missing
        listener.setblocking(not missing)
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            # a module that fails here fails again in the step, which reports it in its run
            with contextlib.suppress(Exception):
                importlib.import_module(missing[0])
            imported.add(missing[0])
            continue
        conn.setblocking(True)
        received = _read_request(conn)
        if received is not None:
            request, fds = received
            if request.get("module") not in modules:
                request["module"], request["executable"] = None, None  # refused when served
            waiting.append((conn, request, fds))


@contextlib.contextmanager
def running() -> Iterator[None]:
    """A fork server for the block's children (``config.FORKSERVER_ENV``). One inherited
    from the caller is used as it is; otherwise one is started here and stopped after."""
    inherited = os.environ.get(config.FORKSERVER_ENV)
    # fork() is only safe to rely on here on Linux (macOS: Objective-C runtimes abort)
    if (inherited and os.path.exists(inherited)) or not sys.platform.startswith("linux"):
        yield
        return
    import shutil
    import subprocess
    import tempfile

    socket_dir = tempfile.mkdtemp(prefix="pipeline-fork-")
    path = os.path.join(socket_dir, "socket")
    env = {k: v for k, v in os.environ.items() if k != config.FORKSERVER_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "steps.infra.forkserver", "serve", path],
        stdin=subprocess.DEVNULL,
        # its imports' warnings would reach the terminal, not a step's log
        stdout=subprocess.DEVNULL,
        stderr=None if config.verbose() else subprocess.DEVNULL,
        cwd=config.PROJECT_ROOT,
        env=env,
    )
    os.environ[config.FORKSERVER_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(config.FORKSERVER_ENV, None)
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=5)
        shutil.rmtree(socket_dir, ignore_errors=True)


def run_command(command: list[str]) -> int:
    """Run ``command`` with a fork server started beside it (``make run``: the server's
    imports overlap the `mlflow run` launcher's own start-up instead of following it)."""
    import subprocess

    if not command:
        print("usage: python -m steps.infra.forkserver run COMMAND...", file=sys.stderr)
        return 2
    with running():
        child = subprocess.Popen(command)
        # A Ctrl-C reaches the command's whole process group; a SIGTERM for us is passed on.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, _f: child.send_signal(signum))
        code = child.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["run"]:
        sys.exit(run_command(sys.argv[2:]))
    else:
        print(
            "usage: python -m steps.infra.forkserver serve SOCKET | run COMMAND...",
            file=sys.stderr,
        )
        sys.exit(2)
