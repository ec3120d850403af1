"""Copy ../MLproject's entry_points block into k8s/MLproject, keeping this file's header.

Run from anywhere: ``python k8s/sync_mlproject.py``. The header (name, docker_env) is
everything before ``entry_points:`` in k8s/MLproject.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = "entry_points:"


def synced(k8s_text: str, root_text: str) -> str:
    header = k8s_text[: k8s_text.index(MARK)]
    return header + root_text[root_text.index(MARK) :]


if __name__ == "__main__":
    target = HERE / "MLproject"
    new = synced(target.read_text(), (HERE.parent / "MLproject").read_text())
    changed = new != target.read_text()
    target.write_text(new)
    print(f"{target}: {'updated' if changed else 'already in sync'}")
