"""The code hash behind step reuse: what changes it and what does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from steps.orchestration import fingerprint
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
        "from steps import config, models\nimport steps.data.schema\n"
        "from steps.tracking import steprun\nfrom steps.infra.errors import StepError\n"
        "def f():\n    from steps.ml.gate import Verdict\n    import numpy\n"
    )
    known = {
        "__init__", "config", "models", "data.__init__", "data.schema", "tracking.__init__",
        "tracking.steprun", "infra.__init__", "infra.errors", "ml.__init__", "ml.gate",
    }  # fmt: skip
    assert fingerprint.imported_modules(source, known) == {
        "config",
        "models",
        "data.schema",
        "tracking.__init__",  # from a package: the package and the module named
        "tracking.steprun",
        "infra.errors",  # from a module: that module, not a module named StepError
        "ml.gate",
    }


def test_closure_follows_imports_transitively():
    sources = {"__init__": "", "a": "from steps import b", "b": "from steps.c import x", "c": ""}
    assert fingerprint.module_closure("a", sources) == ["__init__", "a", "b", "c"]
    # a name imported from the package that is not one of its modules is no module
    sources["c"] = "from steps import not_a_module"
    assert fingerprint.module_closure("a", sources) == ["__init__", "a", "b", "c"]
    assert fingerprint.module_closure("c", sources) == ["__init__", "c"]


def test_closure_enters_subpackages_with_their_init():
    sources = {
        "__init__": "",
        "a": "from steps.pkg import b\nfrom steps.pkg.sub.c import x",
        "pkg.__init__": "",
        "pkg.b": "import steps.other",
        "pkg.sub.__init__": "",
        "pkg.sub.c": "",
        "other": "",
        "unused.__init__": "",
        "unused.d": "",
    }
    assert fingerprint.module_closure("a", sources) == [
        "__init__",
        "a",
        "other",
        "pkg.__init__",
        "pkg.b",
        "pkg.sub.__init__",
        "pkg.sub.c",
    ]


def test_every_module_of_the_package_is_keyed_by_its_dotted_path():
    sources = fingerprint.package_sources(PROJECT_ROOT)
    assert {"train", "config", "__init__", "ml.__init__", "ml.gate"} <= set(sources)
    on_disk = {p.relative_to(PROJECT_ROOT) for p in (PROJECT_ROOT / "steps").rglob("*.py")}
    assert {Path(fingerprint.module_path(name)) for name in sources} == on_disk


def test_a_step_hash_covers_the_subpackage_modules_it_imports():
    sources = fingerprint.package_sources(PROJECT_ROOT)
    train = fingerprint.module_closure("train", sources)
    assert {"ml.__init__", "ml.evaluation", "ml.gate", "tracking.steprun"} <= set(train)
    assert "ml.evaluation" not in fingerprint.module_closure("load_data", sources)
    assert "serving.api" not in train


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
    steprun = project / "steps" / "tracking" / "steprun.py"
    steprun.write_text(steprun.read_text() + "\n")
    after = hashes(project)
    assert all(after[s] != before[s] for s in before)
    lock = project / "requirements.lock"
    lock.write_text(lock.read_text() + "\n")
    assert all(hashes(project)[s] != after[s] for s in after)


def test_editing_a_subpackage_module_train_imports_changes_train_only(project):
    before = hashes(project)
    evaluation = project / "steps" / "ml" / "evaluation.py"
    evaluation.write_text(evaluation.read_text() + "\n# a change\n")
    after = hashes(project)
    assert after["train"] != before["train"]
    assert after["load_data"] == before["load_data"]
    assert after["preprocess"] == before["preprocess"]


def test_a_subpackage_init_is_part_of_the_hash_of_its_importers(project):
    before = hashes(project)
    init = project / "steps" / "ml" / "__init__.py"
    init.write_text(init.read_text() + "\n")
    after = hashes(project)
    assert after["train"] != before["train"]
    assert after["load_data"] == before["load_data"]


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
