"""The code hash behind step reuse: what changes it and what does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from steps import fingerprint
from tests.support import PROJECT_ROOT


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in (*fingerprint.PROJECT_FILES, "README.md"):
        shutil.copy2(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / "steps", tmp_path / "steps")
    return tmp_path


def hashes(root: Path) -> dict[str, str]:
    return {s: fingerprint.code_hash(s, root) for s in ("load_data", "preprocess", "train")}


def test_imports_are_found_anywhere_in_a_module():
    source = (
        "from steps import config, runtime\nimport steps.schema\n"
        "def f():\n    from steps.models import X\n    import numpy\n"
    )
    assert fingerprint.imported_modules(source) == {"config", "runtime", "schema", "models"}


def test_closure_follows_imports_transitively():
    sources = {"__init__": "", "a": "from steps import b", "b": "from steps.c import x", "c": ""}
    assert fingerprint.module_closure("a", sources) == ["__init__", "a", "b", "c"]
    # a name imported from the package that is not one of its modules is no module
    sources["c"] = "from steps import not_a_module"
    assert fingerprint.module_closure("a", sources) == ["__init__", "a", "b", "c"]
    assert fingerprint.module_closure("c", sources) == ["__init__", "c"]


def test_docs_and_readme_do_not_change_any_hash(project):
    before = hashes(project)
    (project / "README.md").write_text("typo fixed\n")
    (project / "docs").mkdir()
    (project / "docs" / "new.md").write_text("# new\n")
    assert hashes(project) == before


def test_editing_a_step_changes_its_hash_and_its_dependents_only(project):
    before = hashes(project)
    train = project / "steps" / "train.py"
    train.write_text(train.read_text() + "\n# a change\n")
    after = hashes(project)
    assert after["train"] != before["train"]
    assert after["load_data"] == before["load_data"]
    assert after["preprocess"] == before["preprocess"]


def test_a_shared_module_or_the_lock_changes_every_step_using_it(project):
    before = hashes(project)
    runtime = project / "steps" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n")
    after = hashes(project)
    assert all(after[s] != before[s] for s in before)
    lock = project / "requirements.lock"
    lock.write_text(lock.read_text() + "\n")
    assert all(hashes(project)[s] != after[s] for s in after)


def test_a_file_hashes_under_its_name_so_a_moved_file_changes_the_hash():
    assert fingerprint.digest([("steps/a.py", b"x")]) != fingerprint.digest([("steps/b.py", b"x")])
    assert fingerprint.digest([("a", b"x"), ("b", b"y")]) != fingerprint.digest(
        [("a", b"y"), ("b", b"x")]
    )


@pytest.mark.parametrize("name", ["MLproject", "python_env.yaml", "requirements.lock"])
def test_what_every_entry_point_runs_under_changes_every_hash(project, name):
    before = hashes(project)
    path = project / name
    path.write_text(path.read_text() + "\n")
    after = hashes(project)
    assert all(after[s] != before[s] for s in before)
