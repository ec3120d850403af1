"""API keys for the prediction API: the check ``steps.serving.api``'s app makes before
anything else.

In: keys from a file (``serve --api-keys-file`` or ``SERVE_API_KEYS_FILE``: one key a line,
blank lines and ``#`` comments ignored) and/or ``SERVE_API_KEYS`` (comma-separated). Neither
set: no key is asked for. Every key listed is valid at once, so a new key can be handed out
before the old one is removed (rotation). The file is re-read when it changes (checked at most
once a second, by its mtime, size and inode); an edit that leaves it unreadable or empty keeps
the keys already loaded, with a warning, so a half-saved file cannot lock every client out.

Out: requests to any path but the open ones (health probes, ``/docs``, ``/openapi.json``)
need ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; otherwise 401 with a JSON body
``{"detail": ...}`` and ``WWW-Authenticate: Bearer``, before the body is read. Keys are
compared with ``hmac.compare_digest`` against every valid key (no early exit), and are never
logged or echoed: errors name the file and line, never a key. Writes nothing.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

FILE_ENV = "SERVE_API_KEYS_FILE"
KEYS_ENV = "SERVE_API_KEYS"
# Short keys are guessable; 16 characters is the floor (`openssl rand -hex 32` gives 64).
MIN_KEY_LENGTH = 16
RELOAD_CHECK_S = 1.0
OPEN_PATHS = frozenset({"/health", "/ping", "/ready", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/v2/health/",)
UNAUTHORIZED_DETAIL = (
    "missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
)


class KeyFileError(ValueError):
    """The key file or variable cannot be used; the message names where, never a key."""


# --- pure core ----------------------------------------------------------------------------
def parse_keys(text: str, origin: str) -> tuple[bytes, ...]:
    """Keys from ``text`` (one a line, ``#`` comments); ``origin`` names it in errors."""
    keys = []
    for number, raw in enumerate(text.splitlines(), start=1):
        key = raw.split("#", 1)[0].strip()
        if not key:
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            raise KeyFileError(
                f"{origin} line {number}: a key must be {MIN_KEY_LENGTH}+ characters without spaces"
            )
        keys.append(key.encode())
    return tuple(keys)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-api-key":
            return value.strip()
        if lowered == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
    return None


def key_matches(given: bytes, valid: Sequence[bytes]) -> bool:
    """Constant time per key, and every key is compared: timing tells nothing about which
    key, or how much of one, matched."""
    matched = False
    for key in valid:
        matched |= hmac.compare_digest(given, key)
    return matched


# --- key sources --------------------------------------------------------------------------
@dataclass
class KeyStore:
    """The valid keys: ``env_keys`` plus the file's, the file re-read when it changes."""

    path: Path | None
    env_keys: tuple[bytes, ...]
    warn: Callable[[str], None]
    _file_keys: tuple[bytes, ...] = ()
    _signature: tuple[int, int, int] | None = None
    _checked: float = 0.0

    def load(self) -> None:
        """Read the file now; raises KeyFileError (start-up must fail on a bad file)."""
        if self.path is None:
            return
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except OSError as exc:
            raise KeyFileError(f"cannot read API key file {self.path}: {exc.strerror}") from exc
        keys = parse_keys(text, str(self.path))
        if not keys and not self.env_keys:
            raise KeyFileError(f"API key file {self.path} holds no key")
        self._file_keys = keys
        self._signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        self._checked = time.monotonic()

    def keys(self) -> tuple[bytes, ...]:
        if self.path is not None and time.monotonic() - self._checked >= RELOAD_CHECK_S:
            self._reload_if_changed()
        return self.env_keys + self._file_keys

    def _reload_if_changed(self) -> None:
        assert self.path is not None
        self._checked = time.monotonic()
        try:
            stat = self.path.stat()
        except OSError:
            stat = None
        signature = None if stat is None else (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        before = self._signature
        try:
            self.load()
        except KeyFileError as exc:
            self._signature = signature  # warn once per change, not once a second
            self.warn(f"API keys not reloaded, the previous keys stay valid: {exc}")
            return
        if before is not None:
            self.warn(f"API keys reloaded from {self.path}: {len(self._file_keys)} key(s)")


def warn_on_stderr(message: str) -> None:
    print(f"[serve] {message}", file=sys.stderr, flush=True)


def from_environment(warn: Callable[[str], None] = warn_on_stderr) -> KeyStore | None:
    """The keys ``SERVE_API_KEYS_FILE`` and ``SERVE_API_KEYS`` name (None: neither is set).
    serve's worker processes inherit both, so each builds the same store."""
    path = os.environ.get(FILE_ENV) or None
    env_text = os.environ.get(KEYS_ENV, "")
    if path is None and not env_text.strip():
        return None
    env_keys = parse_keys(env_text.replace(",", "\n"), KEYS_ENV)
    store = KeyStore(Path(path) if path else None, env_keys, warn)
    store.load()
    return store


# --- the check ---------------------------------------------------------------------------
def admits(scope: dict, store: KeyStore) -> bool:
    """Whether a request may go on: an open path, or a valid key presented."""
    if scope["type"] != "http" or is_open(scope["path"]):
        return True
    given = presented_key(scope["headers"])
    return given is not None and key_matches(given, store.keys())


UNAUTHORIZED_BODY = json.dumps({"detail": UNAUTHORIZED_DETAIL}).encode()


async def refuse(send: Callable) -> None:
    """The 401 answer, before the body is read."""
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(UNAUTHORIZED_BODY)).encode()),
                (b"www-authenticate", b'Bearer realm="housing-api"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": UNAUTHORIZED_BODY})
