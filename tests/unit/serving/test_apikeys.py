"""API keys: parsing, matching, and the check in front of serve's real app (steps.serving.api)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from steps.serving import api, apikeys

KEY_A = "a" * 20
KEY_B = "b" * 24


def store(path: Path | None, env_keys: tuple[bytes, ...] = ()) -> apikeys.KeyStore:
    warnings: list[str] = []
    keys = apikeys.KeyStore(path, env_keys, warnings.append)
    keys.load()
    keys.warnings = warnings  # type: ignore[attr-defined]
    return keys


def test_parse_keys_skips_comments_and_names_a_bad_line_without_the_key():
    assert apikeys.parse_keys(f"# team\n{KEY_A}  # ci\n\n{KEY_B}\n", "f") == (
        KEY_A.encode(),
        KEY_B.encode(),
    )
    with pytest.raises(apikeys.KeyFileError, match="f line 2") as bad:
        apikeys.parse_keys(f"{KEY_A}\nshort-key\n", "f")
    assert "short-key" not in str(bad.value)


def test_presented_key_reads_bearer_and_x_api_key():
    assert apikeys.presented_key([(b"authorization", b"Bearer " + KEY_A.encode())]) == b"a" * 20
    assert apikeys.presented_key([(b"X-API-Key", KEY_B.encode())]) == KEY_B.encode()
    assert apikeys.presented_key([(b"authorization", b"Basic abc")]) is None
    assert apikeys.presented_key([]) is None


def test_key_matches_any_valid_key_only():
    valid = (KEY_A.encode(), KEY_B.encode())
    assert apikeys.key_matches(KEY_B.encode(), valid)
    assert not apikeys.key_matches(KEY_A[:-1].encode(), valid)
    assert not apikeys.key_matches(KEY_A.encode(), ())


def test_from_environment_is_none_without_keys_and_fails_on_an_empty_file(tmp_path, monkeypatch):
    monkeypatch.delenv(apikeys.FILE_ENV, raising=False)
    monkeypatch.delenv(apikeys.KEYS_ENV, raising=False)
    assert apikeys.from_environment() is None
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n")
    monkeypatch.setenv(apikeys.FILE_ENV, str(empty))
    with pytest.raises(apikeys.KeyFileError, match="holds no key"):
        apikeys.from_environment()
    monkeypatch.setenv(apikeys.KEYS_ENV, f"{KEY_A},{KEY_B}")
    assert apikeys.from_environment().keys() == (KEY_A.encode(), KEY_B.encode())


def test_the_app_answers_401_without_a_valid_key_and_keeps_health_open(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(KEY_A + "\n")
    client = TestClient(api.create_app(None, api_keys=store(keys)))
    for path in ("/health", "/ping", "/ready", "/v2/health/live", "/v2/health/ready"):
        assert client.get(path).status_code != 401, path
    for headers in ({}, {"X-API-Key": KEY_B}, {"Authorization": f"Basic {KEY_A}"}):
        refused = client.post("/predict", json={"data": []}, headers=headers)
        assert refused.status_code == 401
        assert "API key" in refused.json()["detail"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/metrics").status_code == 401
    # the hot lane (steps.serving.api.HotLane) answers these without FastAPI: the check comes first
    assert client.post("/invocations", json={"inputs": []}).status_code == 401
    assert client.post("/v2/models/m/infer", json={"inputs": []}).status_code == 401
    # past the key check: the app's own answer (no model loaded)
    assert (
        client.post("/predict", json={"data": []}, headers={"X-API-Key": KEY_A}).status_code == 503
    )
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 200


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(apikeys, "RELOAD_CHECK_S", 0.0)
    keys = tmp_path / "keys"
    keys.write_text(KEY_A + "\n")
    current = store(keys)
    client = TestClient(api.create_app(None, api_keys=current))

    def status(key: str) -> int:
        return client.get("/version", headers={"X-API-Key": key}).status_code

    keys.write_text(f"{KEY_A}\n{KEY_B}\n")  # rotation: both valid for a while
    bump(keys)
    assert status(KEY_A) != 401 and status(KEY_B) != 401
    keys.write_text(KEY_B + "\n")
    bump(keys)
    assert status(KEY_A) == 401 and status(KEY_B) != 401
    keys.write_text("half-saved\n")
    bump(keys)
    assert status(KEY_B) != 401
    assert any("not reloaded" in w for w in current.warnings)  # type: ignore[attr-defined]
    assert not any(KEY_B in w or KEY_A in w for w in current.warnings)  # type: ignore[attr-defined]


def bump(path: Path) -> None:
    """A new mtime even on filesystems with coarse timestamps."""
    later = time.time() + 2
    os.utime(path, (later, later))
