"""What MLflow's basic auth costs per request, with and without the password cache.

Starts ``python -m steps.infra.authserver`` twice on the same stores (``--auth-cache-ttl 0``: every
request verifies the scrypt hash; the default, ``steps.infra.authserver.AUTH_CACHE_TTL_S``: verified
once per worker and TTL), makes the ``pipeline`` account of tests/support/servers.py, and times
``requests`` authenticated ``experiments/get-by-name`` calls in a row as that account on each.
Prints requests/s and ms per request for both and their ratio.

    python bench/auth_bench.py [--requests 200]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:  # run as a script: make `steps` and `tests` importable
    sys.path.insert(0, str(PROJECT_ROOT))

from steps import config  # noqa: E402
from steps.infra import authserver  # noqa: E402
from tests.support import (  # noqa: E402
    TEST_ACCOUNTS,
    apply_accounts,
    start_auth_server,
    stop_auth_server,
)


def timed_requests(url: str, n: int) -> float:
    """Seconds for ``n`` sequential authenticated reads as the pipeline account."""
    import requests

    _, user, password = next(a for a in TEST_ACCOUNTS if a[0] == "pipeline")
    endpoint = f"{url}/api/2.0/mlflow/experiments/get-by-name"
    params = {"experiment_name": config.EXPERIMENT_NAME}
    with requests.Session() as session:
        session.get(endpoint, params=params, auth=(user, password)).raise_for_status()  # warm
        started = time.perf_counter()
        for _ in range(n):
            session.get(endpoint, params=params, auth=(user, password)).raise_for_status()
        return time.perf_counter() - started


@click.command()
@click.option("--requests", "n", type=click.IntRange(min=1), default=200, show_default=True)
def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        root = Path(tmp)
        (root / "secrets").mkdir()
        results = {}
        for ttl in (0, authserver.AUTH_CACHE_TTL_S):
            proc, url = start_auth_server(
                f"sqlite:///{root / 'mlflow.db'}",
                f"sqlite:///{root / 'basic_auth.db'}",
                root / "artifacts",
                root / "secrets",
                auth_options=["--auth-cache-ttl", str(ttl)],
            )
            try:
                made = apply_accounts(url, root / "accounts.txt")
                if made.returncode != 0:
                    raise SystemExit(made.stderr)
                results[ttl] = timed_requests(url, n)
            finally:
                stop_auth_server(proc)
    for ttl, seconds in results.items():
        print(
            f"auth cache ttl {ttl:>3} s: {n / seconds:7.1f} req/s, "
            f"{1000 * seconds / n:6.2f} ms/request ({n} sequential reads)"
        )
    cached, uncached = results[authserver.AUTH_CACHE_TTL_S], results[0]
    print(f"cached / uncached throughput: {uncached / cached:.2f}x")


if __name__ == "__main__":
    main()
