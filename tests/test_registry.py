"""The task registry is the one place a task is declared, and the layers import one way.

A task added from inside tests/ (tests/tiny_task: a module, a DataModule, a config folder, one
`register`) goes through `bench run`, the leaderboard and the dry run with no file outside its own.
"""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.results import read_rows
from tasks import registry
from tasks.nn.errors import ConfigError
from tests import tiny_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def parity():
    registry.register(tiny_task.SPEC)
    yield tiny_task.SPEC
    registry.unregister(tiny_task.SPEC.name)


def test_a_task_added_from_tests_runs_through_bench_and_the_leaderboard(parity, tmp_path, capsys):
    tiny_task.write_bits(tmp_path / "data")
    common = ["--task", "parity", "--data-root", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs")]
    assert main(["run", *common, "--dry-run"]) == 0
    assert "# parity/quick dropout=on seed=0 config_hash=" in capsys.readouterr().out
    assert main(["run", *common, "--dropout", "on,off", "--results-dir", str(tmp_path / "res")]) == 0
    rows = read_rows(tmp_path / "res" / "runs.csv")
    assert [(r["task"], r["preset"], r["dropout"]) for r in rows] == [("parity", "quick", "on"), ("parity", "quick", "off")]
    assert all(r["test_acc"] and r["valid_acc"] and r["config_hash"] for r in rows)
    assert rows[0]["env"] == rows[1]["env"] and rows[0]["env_hardware"].startswith("cpu ")
    packages = tmp_path / "res" / "environments" / f"{rows[0]['env_packages']}.txt"
    assert f"torch=={metadata.version('torch')}\n" in packages.read_text()
    assert main(["leaderboard", "--results-dir", str(tmp_path / "res")]) == 0
    board = (tmp_path / "res" / "LEADERBOARD.md").read_text()
    assert "## parity: Parity of a bit string (a test task)" in board and "**test_acc** (last epoch)" in board
    assert (tmp_path / "res" / "curves-parity-quick.png").is_file()


def test_registry_rejects_a_second_task_of_one_name_and_lists_the_known_ones(parity):
    with pytest.raises(ValueError, match="'parity' is already registered"):
        registry.register(tiny_task.SPEC)
    with pytest.raises(ConfigError, match="unknown task 'nope'; known tasks: captioning, parity, ptb, speech"):
        registry.get("nope")


def test_every_configs_folder_is_a_task_and_every_task_has_quick_and_paper_presets():
    folders = sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_dir())
    assert folders == registry.names()
    for name in registry.names():
        presets = {p.stem for p in registry.get(name).presets_dir.glob("*.yaml")}
        assert {"quick", "paper", registry.get(name).default_preset} <= presets, name


# Top to bottom; a module may import its own layer and the ones below it, never above.
LAYERS = ("benchmark", "tasks", "datamodules", "tasks.nn")


def _layer(module: str) -> int | None:
    matches = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return max(matches) if matches else None  # tasks.nn.x is in tasks.nn, not tasks


def _project_imports(path: Path):
    """(line, imported module, at module level?) for every import of a project module in `path`."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        for name in names:
            if _layer(name) is not None:
                yield node.lineno, name, id(node) in top


def test_imports_run_one_way_from_the_application_down_to_the_shared_pieces():
    upward, inside = [], []
    for path in sorted(p for layer in ("benchmark", "tasks", "datamodules") for p in (ROOT / layer).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for line, name, at_top in _project_imports(path):
            if _layer(name) < _layer(module):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            # The CLI loads torch only for the verbs that need it; anywhere else an import inside a
            # function would be hiding a cycle.
            if not at_top and module != "benchmark.cli":
                inside.append(f"{path.relative_to(ROOT)}:{line} imports {name} inside a function")
    assert not upward, "\n".join(upward)
    assert not inside, "\n".join(inside)
