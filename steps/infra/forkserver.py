"""The step server: MLflow, pandas and scikit-learn imported once, and kept for the next run.

Every step is its own process (MLflow Projects starts ``python -m steps.<step>`` per child
run), and each spent 3–6 s of CPU importing the same libraries before any work; main itself
spent ~3 s importing MLflow and its SQL store before it could decide that every step is
reused. The step server imports them once and listens on Unix sockets: main and load_data are
served by the server itself, the other steps by a fork of it on the second socket. A step's
``python -m steps.<step>`` still starts as MLflow starts it, but ``delegate()`` (called from
``steps/__init__``, before the step's own imports) hands its argv, environment, working
directory and stdin/stdout/stderr to the server, which forks a worker that imports the
project's modules afresh from that directory (so edits count at once and one server serves
every clone run by the same interpreter) and runs the step module as ``__main__``. The
started process stays what MLflow watches: it forwards SIGINT/SIGTERM/SIGHUP to the worker
and exits with the worker's exit code, so runs, logs, cancellation and exit codes are as
without the server.

One server per interpreter (``sys.prefix`` + ``sys.executable``), at a socket in a private
runtime directory (``server_path``). MLflow's launcher of main starts it as it starts
(``steps.infra.starthook``), or main when none answers; main points its
children at it (``config.FORKSERVER_ENV``); a later ``python -m steps.main`` finds it there
and is served too. It outlives its last run by ``config.STEP_SERVER_IDLE_ENV`` seconds
(default ``config.DEFAULT_STEP_SERVER_IDLE_S``; 0 = it ends with the run that started it),
and ends at once when packages are installed into the interpreter's environment (a request
then runs in its own process, and the next main starts a fresh server).

When no server answers, the interpreter or its ``sys.path`` differs, or the module is not a
step, ``delegate()`` returns and the step runs in its own process as usual.

In: ``python -m steps.infra.forkserver daemon SOCKET [HOLDER_PID]`` (what main starts),
``serve SOCKET`` (a server that ends with its parent), ``start HOLDER_PID`` (this
interpreter's server, unless one answers, for a run that process waits for: what
``steps.infra.starthook`` starts as ``mlflow run . -e main --env-manager local`` starts, so
the server's imports overlap the launcher's), ``stop`` (ends this interpreter's server).
Out: nothing logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from steps import config
from steps.infra import processes

if TYPE_CHECKING:
    import subprocess

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
# How often an idle step server looks whether its time is up.
IDLE_TICK_S = 2.0
MAX_BASE_CHARS = 64


def server_path() -> str | None:
    """The socket of this interpreter's step server, in a directory only we may write (None
    when that cannot be had: then there is no step server, and every step runs itself)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    if len(base) > MAX_BASE_CHARS:  # a Unix socket's path has room for ~107 bytes
        base = "/tmp"
    key = hashlib.sha256(f"{sys.prefix}\0{sys.executable}".encode()).hexdigest()[:16]
    private = os.path.join(base, f"housing-steps-{os.getuid()}")
    try:
        os.makedirs(private, mode=0o700, exist_ok=True)
        info = os.lstat(private)
    except OSError:
        return None
    # A shared /tmp: another user could have made the directory first, to serve our steps.
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(private):
        return None
    return os.path.join(private, f"{key}.sock")


def answers(path: str) -> bool:
    """Is a server listening on ``path``? (It reads an empty request and drops it.)"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


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
    """Run this ``python -m steps.<step>`` in a worker of the step server and exit with its
    code; return (run here instead) when there is no usable server. main's children are told
    the server by main; main itself looks for its interpreter's server."""
    module = served_module(list(getattr(sys, "orig_argv", [])))
    path = os.environ.get(config.FORKSERVER_ENV)
    if not path and module == "steps.main" and sys.platform.startswith("linux"):
        path = server_path()
        # None answers: start it and be its first request, rather than import MLflow here
        # while it imports the same for the steps (two cores would do that work twice).
        if path and not answers(path) and not _started(path):
            return
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
            "sys_path": sys.path[1:],
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
    import importlib
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
    # The project's own modules come from the client's directory as they are now (the server
    # may have imported another clone's, or an older edit); the libraries stay imported.
    for name in [name for name in sys.modules if name == "steps" or name.startswith("steps.")]:
        del sys.modules[name]
    module = request["module"]
    sys.argv = [module, *request["args"]]
    _name_process(module)
    # the process MLflow started, which waits for us (processes.client_parent_pid)
    importlib.import_module("steps.infra.processes").set_client_pid(int(request["pid"]))
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


def _name_process(name: str) -> None:
    """Let ``ps``/``top`` (and anyone who stops a run's processes) see which step a worker
    runs: its command line stays the server's."""
    import ctypes

    pr_set_name = 15
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


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


class Lease:
    """What keeps a server alive, and what makes its work stale.

    A step server (``persistent``) ends ``idle_s`` after its last request once its holder
    (the process that started it) and its workers are gone; any server refuses requests, and
    ends, once a ``sys.path`` directory changed (packages installed or removed), as its
    imported libraries may no longer be the ones on disk.
    """

    def __init__(self, paths: tuple[str, ...], persistent: bool, holder: int | None) -> None:
        self.paths = paths  # the sockets this server owns
        self.persistent = persistent
        self.holder = holder
        try:
            self.idle_s = float(os.environ[config.STEP_SERVER_IDLE_ENV])
        except (KeyError, ValueError):
            self.idle_s = config.DEFAULT_STEP_SERVER_IDLE_S
        self.sys_path = sys.path[1:]
        self.site = self._site_state()
        self.owned = {path: os.stat(path).st_ino for path in paths}
        self.workers: list[int] = []
        self.last = time.monotonic()

    def _site_state(self) -> list[tuple[str, int]]:
        state = []
        for entry in self.sys_path:
            with contextlib.suppress(OSError):
                state.append((entry, os.stat(entry).st_mtime_ns))
        return state

    def refusal(self, request: dict, fds: list[int]) -> str | None:
        """Why this server must not serve ``request`` (None: it may)."""
        if request.get("executable") != sys.executable or len(fds) != 3:
            return "not served here"
        if request.get("sys_path") != self.sys_path:
            return "another sys.path"
        if self._site_state() != self.site:
            return "stale"
        return None

    def served(self, pid: int) -> None:
        self.workers.append(pid)
        self.last = time.monotonic()

    def over(self) -> bool:
        """Is a persistent server's time up (or its interpreter gone)?"""
        if not os.path.exists(sys.executable):
            return True
        for path, inode in self.owned.items():  # removed, or taken over by another server
            try:
                if os.stat(path).st_ino != inode:
                    return True
            except OSError:
                return True
        self.workers = [pid for pid in self.workers if processes.process_alive(pid)]
        held = self.holder is not None and processes.process_alive(self.holder)
        if held or self.workers:
            self.last = time.monotonic()
            return False
        return time.monotonic() - self.last >= self.idle_s

    def end(self, *_: object) -> None:
        """Take our sockets away (unless another server has replaced them), then exit."""
        for path, inode in self.owned.items():
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
        os._exit(0)


def _serve_one(
    listener: socket.socket, lease: Lease, conn: socket.socket, request: dict, fds: list[int]
) -> bool:
    """Fork the worker of one request, or refuse it (the client then runs the step itself).
    False when the server went stale and must end."""
    refused = lease.refusal(request, fds)
    if refused:
        with contextlib.suppress(OSError):
            _send(conn, {"refused": refused})
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                listener.close()
                _run_worker(conn, request, fds)
            finally:
                os._exit(1)  # a worker never returns to the accept loop
        lease.served(pid)
    conn.close()
    for fd in fds:
        os.close(fd)
    return refused != "stale"


def _bind(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)  # clients queue here while we import
    return listener


def _claim(path: str) -> tuple[socket.socket, socket.socket] | None:
    """Bind the step server's two sockets, unless a live server already has them (None).
    Two mains may start a server at once: the lock lets one of them bind."""
    import fcntl

    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers(path):
            return None
        for stale in (path, path + HEAVY_SUFFIX):  # left by a server that was killed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        return _bind(path), _bind(path + HEAVY_SUFFIX)


def serve(path: str, persistent: bool = False, holder: int | None = None) -> None:
    """Import MLflow and the tracking store, then split in two: this process serves
    ``LIGHT`` on ``path`` and a fork of it serves ``HEAVY`` on ``path + HEAVY_SUFFIX``, each
    importing its steps' needs and forking one worker per request as soon as that step's
    imports are done. (One process would hold main up while it imports skops, whose start-up
    lists every scikit-learn estimator for ~2.5 s.) Nothing here may compute: OpenMP
    (LightGBM) does not survive a fork once it has started threads.
    ``persistent``: the step server (see ``Lease``); else it ends with its parent."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # main decides; a Ctrl-C is for it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers report through their sockets
    if persistent:
        claimed = _claim(path)
        if claimed is None:
            return
        light, heavy = claimed
    else:
        processes.die_with_parent()
        light, heavy = _bind(path), _bind(path + HEAVY_SUFFIX)
    lease = Lease((path, path + HEAVY_SUFFIX), persistent, holder)
    signal.signal(signal.SIGTERM, lease.end if persistent else lambda *_: os._exit(0))
    for name in _COMMON:
        with contextlib.suppress(Exception):  # the step will report it
            importlib.import_module(name)
    if os.fork() == 0:
        light.close()
        processes.die_with_parent()
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        _serve_loop(heavy, HEAVY, Lease((), False, None))
    heavy.close()
    _serve_loop(light, LIGHT, lease)


def _serve_loop(listener: socket.socket, modules: tuple[str, ...], lease: Lease) -> None:
    import importlib

    preload = tuple(dict.fromkeys(name for module in modules for name in NEEDS[module]))
    imported: set[str] = set(_COMMON)
    waiting: list[tuple[socket.socket, dict, list[int]]] = []
    while True:
        for item in list(waiting):
            if set(NEEDS.get(item[1].get("module"), ())) <= imported:
                waiting.remove(item)
                if not _serve_one(listener, lease, *item):
                    _stale(lease)
        missing = [m for m in preload if m not in imported]
        for item in waiting:  # first what a waiting step needs
            missing = [m for m in NEEDS.get(item[1]["module"], ()) if m not in imported] + missing
        if missing:
            listener.setblocking(False)
        else:
            listener.settimeout(IDLE_TICK_S if lease.persistent else None)
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            # a module that fails here fails again in the step, which reports it in its run
            with contextlib.suppress(Exception):
                importlib.import_module(missing[0])
            imported.add(missing[0])
            continue
        except TimeoutError:
            if lease.over():
                lease.end()
            continue
        conn.setblocking(True)
        received = _read_request(conn)
        if received is not None:
            request, fds = received
            if request.get("module") not in modules:
                request["module"], request["executable"] = None, None  # refused when served
            waiting.append((conn, request, fds))


def _stale(lease: Lease) -> None:
    """Packages changed under us: end this server (the heavy half ends its parent too, which
    owns the sockets), so that the next main starts a fresh one."""
    if not lease.owned:
        with contextlib.suppress(ProcessLookupError):
            os.kill(os.getppid(), signal.SIGTERM)
        os._exit(0)
    lease.end()


def _started(path: str, timeout: float = 10.0) -> bool:
    """Start the step server and wait until it listens (False: it did not)."""
    server = start_server(path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(path):
            return True
        if server.poll() is not None:  # another main's server won the socket: use that
            return answers(path)
        time.sleep(0.01)
    return False


def start_server(path: str, holder: int | None = None) -> subprocess.Popen:
    """Start this interpreter's step server at ``path``, detached: it outlives its holder (we,
    unless told another process; see ``Lease``) and keeps none of our environment's run
    (MLFLOW_*) or terminal."""
    import subprocess

    # nor a diagnostic asked of one run: every worker would print its import profile
    dropped = {config.FORKSERVER_ENV, "PYTHONPROFILEIMPORTTIME"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k not in dropped}
    # Its own output goes to a file beside its socket, never to ours: it outlives us, and a
    # caller reading our output to its end would wait for the server too.
    holder = holder or os.getpid()
    with open(path + ".log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "steps.infra.forkserver", "daemon", path, str(holder)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=config.PROJECT_ROOT,
            env=env,
            start_new_session=True,  # a Ctrl-C for the run is not for the server
        )


@contextlib.contextmanager
def running() -> Iterator[None]:
    """The block's children are served by a step server (``config.FORKSERVER_ENV``): one
    inherited from the caller as it is, else this interpreter's, started if none answers."""
    inherited = os.environ.get(config.FORKSERVER_ENV)
    # fork() is only safe to rely on here on Linux (macOS: Objective-C runtimes abort)
    if (inherited and os.path.exists(inherited)) or not sys.platform.startswith("linux"):
        yield
        return
    path = server_path()
    if path is None:
        yield
        return
    if not answers(path):
        start_server(path)
    os.environ[config.FORKSERVER_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(config.FORKSERVER_ENV, None)


def stop() -> int:
    """End this interpreter's step server, if one runs (``make stop-step-server``)."""
    path = server_path()
    lock = f"{path}.lock" if path else None
    if not path or not lock or not os.path.exists(lock) or not answers(path):
        return 0
    import fcntl

    with open(lock) as held:  # not while another server is being started
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            pid = _server_pid(path)
        except OSError:
            return 0
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return 0


def _server_pid(path: str) -> int | None:
    """The pid of the process listening on ``path`` (its peer credentials)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(path)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None


def start(holder: int) -> int:
    """Start this interpreter's step server for a run that ``holder`` waits for, unless one
    answers (``steps.infra.starthook``: MLflow's launcher of ``main``, as it starts)."""
    path = server_path()
    if path and not answers(path):
        start_server(path, holder)
    return 0


USAGE = (
    "usage: python -m steps.infra.forkserver daemon SOCKET [PID] | serve SOCKET"
    " | start HOLDER_PID | stop"
)

if __name__ == "__main__":
    verb, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if verb == "daemon" and len(rest) in (1, 2):
        serve(rest[0], persistent=True, holder=int(rest[1]) if len(rest) == 2 else None)
    elif verb == "serve" and len(rest) == 1:
        serve(rest[0])
    elif verb == "start" and len(rest) == 1 and rest[0].isdigit():
        sys.exit(start(int(rest[0])))
    elif verb == "stop" and not rest:
        sys.exit(stop())
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(2)
