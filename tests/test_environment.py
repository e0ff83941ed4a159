"""The locked environment and the fingerprint each results row carries.

requirements.lock pins every dependency (version and sha256) and `make setup` installs from it; the
installed environment is the lock's. Each row names its environment, and a leaderboard pool that
mixes environments says so.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import torch
from packaging.requirements import Requirement

from benchmark import environment
from benchmark.leaderboard import build
from benchmark.results import append_row, read_rows

ROOT = Path(__file__).resolve().parent.parent


def _locked() -> list[Requirement]:
    """The lock's requirements (a line `name==version ; marker \\` then its hash lines)."""
    text = (ROOT / "requirements.lock").read_text()
    return [Requirement(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][^\s\\]*(?: ; [^\\]+?)?)\s*\\$", text, re.M)]


def test_the_lock_pins_every_dependency_with_hashes_and_the_installed_versions_are_its_own():
    locked = _locked()
    names = {re.sub(r"[-_.]+", "-", r.name).lower() for r in locked}
    direct = [Requirement(d) for d in metadata.requires("rnnreg-bench") or []]  # pyproject's, all locked
    assert {re.sub(r"[-_.]+", "-", d.name).lower() for d in direct if not d.marker} <= names
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in locked)
    text = (ROOT / "requirements.lock").read_text()
    hashed = r"==\S+.*\\\n\s+--hash=sha256:[0-9a-f]{64}"
    assert all(re.search(f"^{re.escape(r.name)}{hashed}", text, re.M) for r in locked)
    # What this environment runs is what the lock says (extra tools a developer added may sit beside it).
    wrong = [f"{r.name}: locked {r.specifier}, installed {metadata.version(r.name)}" for r in locked
             if (r.marker is None or r.marker.evaluate()) and metadata.version(r.name) not in r.specifier]
    assert not wrong, wrong


def test_fingerprint_names_packages_and_the_cpu_vector_path_and_changes_with_either(monkeypatch):
    env, pkgs = environment.fingerprint(torch.device("cpu"))
    names = [p.split('==')[0] for p in pkgs]
    assert f"torch=={metadata.version('torch')}" in pkgs and names == sorted(set(names))
    assert re.fullmatch(r"[0-9a-f]{10}", env["env"]) and re.fullmatch(r"[0-9a-f]{10}", env["env_packages"])
    assert env["env_hardware"].startswith(f"cpu {torch.backends.cpu.get_cpu_capability()} (")
    assert environment.fingerprint(torch.device("cpu"))[0] == env  # stable
    monkeypatch.setattr(environment, "packages", lambda: [p if not p.startswith("numpy==") else "numpy==0.0"
                                                          for p in pkgs])
    other = environment.fingerprint(torch.device("cpu"))[0]
    assert other["env_packages"] != env["env_packages"] and other["env"] != env["env"]
    monkeypatch.setattr(environment, "packages", lambda: pkgs)
    monkeypatch.setattr(environment, "hardware", lambda device: "cpu DEFAULT ()")
    slower = environment.fingerprint(torch.device("cpu"))[0]
    assert slower["env_packages"] == env["env_packages"] and slower["env"] != env["env"]


def test_package_list_is_written_once_per_hash(tmp_path):
    path = environment.save_package_list(tmp_path, "abc", ["a==1", "b==2"])
    assert path == tmp_path / "environments" / "abc.txt" and path.read_text() == "a==1\nb==2\n"
    environment.save_package_list(tmp_path, "abc", ["changed==9"])
    assert path.read_text() == "a==1\nb==2\n" and not list(path.parent.glob(".*"))


def _row(dropout, seed, acc, env):
    return {"task": "speech", "preset": "quick", "dropout": dropout, "seed": str(seed), "overrides": "",
            "config_hash": "aaaa", "test_frame_acc": str(acc), "finished_utc": f"2026-11-30T10:0{seed}:00Z",
            "command": "bench run", "env": env}


def test_a_pool_that_mixes_environments_says_so_and_one_that_does_not_stays_quiet(tmp_path):
    for seed, (on, off) in enumerate([(0.60, 0.50), (0.62, 0.55), (0.61, 0.52)]):
        append_row(tmp_path, _row("on", seed, on, "e1"))
        append_row(tmp_path, _row("off", seed, off, "e1" if seed < 2 else "e2"))
    board = {r["dropout"]: r for r in read_rows(build(tmp_path, plots=False))}
    assert board["on"]["env"] == "e1" and board["off"]["env"] == "2 environments: e1, e2"
    effect = read_rows(tmp_path / "effects.csv")[0]
    assert effect["env"] == "2 environments: e1, e2" and effect["pairs_across_envs"] == "1"
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "quick `aaaa` dropout off pools rows from 2 environments: e1, e2" in md
    assert "dropout on pools" not in md
    assert "the pairs mix 2 environments: e1, e2; 1 of 3 pairs ran on and off in different environments" in md


def test_an_effect_names_only_the_environments_of_its_pairs(tmp_path):
    """An off row with no on partner (seed 3, from another machine) is on the board, not in the effect."""
    for seed, (on, off) in enumerate([(0.60, 0.50), (0.62, 0.55), (0.61, 0.52)]):
        append_row(tmp_path, _row("on", seed, on, "e1" if seed < 2 else "e2"))
        append_row(tmp_path, _row("off", seed, off, "e1" if seed < 2 else "e2"))
    append_row(tmp_path, _row("off", 3, 0.51, "e3"))
    build(tmp_path, plots=False)
    effect = read_rows(tmp_path / "effects.csv")[0]
    assert effect["pairs"] == "3" and effect["env"] == "2 environments: e1, e2" and effect["pairs_across_envs"] == "0"
    assert "the pairs mix 2 environments: e1, e2; each pair ran in one" in (tmp_path / "LEADERBOARD.md").read_text()
