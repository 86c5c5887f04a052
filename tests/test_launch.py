"""One-click launch (course/launch.py): badges and the hosted set-up cell from pyproject's URL,
the set-up's behaviour on and off Colab/Kaggle, and Binder's pins against the root pins."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safealign_lib.config import REPO_ROOT
from safealign_lib.course import launch

URL = "https://github.com/owner/repo"
NB = "00_model_organism.ipynb"


def _checkout() -> Path:
    if REPO_ROOT is None:
        pytest.skip("not a checkout: no README, pyproject.toml or binder/")
    return REPO_ROOT


def test_urls_and_badges_follow_the_repository_url():
    assert launch.owner_and_name(URL + ".git") == ("owner", "repo")
    assert launch.binder_url(NB, URL) == (
        "https://mybinder.org/v2/gh/owner/repo/HEAD?labpath=notebooks%2F00_model_organism.ipynb"
    )
    assert launch.colab_url(NB, URL) == (
        "https://colab.research.google.com/github/owner/repo/blob/main/notebooks/" + NB
    )
    line = launch.badges(NB, URL)
    assert "/exercises/" + NB in launch.badges(NB, URL, folder="exercises")
    assert line.count("](") == 4 and launch.binder_url(NB, URL) in line
    for bad in ("https://gitlab.com/owner/repo", "https://github.com/owner", "owner/repo"):
        with pytest.raises(ValueError, match="not a GitHub repository URL"):
            launch.owner_and_name(bad)


def test_readme_badges_agree_with_pyproject():
    root = _checkout()
    url = launch.repository_url()
    assert url.startswith("https://github.com/")
    readme = (root / "README.md").read_text()
    assert launch.badges(NB, url) in readme, "README badges differ from pyproject's URL"
    # every Binder or Colab link in the README opens this repository
    linked = re.findall(
        r"(?:mybinder\.org/v2/gh|colab\.research\.google\.com/github)/([^/]+/[^/]+)/", readme
    )
    assert linked and set(linked) == {"/".join(launch.owner_and_name(url))}


def test_setup_cell_is_plain_python_and_does_nothing_here(tmp_path, monkeypatch):
    src = launch.setup_cell(URL)
    ast.parse(src)  # no IPython magic: ruff and papermill read it as Python
    assert "def " not in src and URL in src  # the notebook shape check forbids functions
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(src, "<setup cell>", "exec"), {})
    assert calls == [] and list(tmp_path.iterdir()) == []
    assert launch.on_hosted_runtime() is False
    assert launch.colab_setup(run=lambda *a, **k: calls.append(a)) is False and calls == []


def test_setup_cell_on_kaggle_clones_installs_loosely_and_points_at_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("SAFEALIGN_DATA", "x")  # restored after the test ...
    monkeypatch.delenv("SAFEALIGN_DATA")  # ... and unset during it
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        if cmd[:2] == ["git", "clone"]:  # a checkout appears
            (tmp_path / "repo").mkdir()
            (tmp_path / "repo" / "pyproject.toml").write_text("")

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(compile(launch.setup_cell(URL), "<setup cell>", "exec"), {})
    root = tmp_path / "repo"
    assert calls == [
        ["git", "clone", "--depth", "1", URL],
        [sys.executable, "-m", "pip", "install", "--quiet", "-e", str(root)],
    ]
    assert "requirements.txt" not in " ".join(map(str, calls))  # no CPU torch pin
    assert sys.path[0] == str(root)
    assert os.environ["SAFEALIGN_DATA"] == str(root / "data")


def _pins(path: Path) -> dict[str, str]:
    """{package: version} of a requirements file's ``name==version`` lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


# Root pins that binder/requirements.txt leaves out on purpose, with the reason.
NOT_ON_BINDER = {
    "jupyterlab": "repo2docker provides its own JupyterLab; a second pin can conflict with it",
    "pytest": "a development tool: a Binder session runs notebooks, not the test suite",
    "ruff": "a development tool",
    "nbstripout": "a development tool",
}


def test_binder_pins_are_the_root_pins():
    root = _checkout()
    main, binder = _pins(root / "requirements.txt"), _pins(root / "binder" / "requirements.txt")
    assert set(NOT_ON_BINDER) <= set(main), "an allowed difference names no root pin"
    expected = {k: v for k, v in main.items() if k not in NOT_ON_BINDER}
    assert binder == expected, "binder/requirements.txt differs from the root pins"
    text = (root / "binder" / "requirements.txt").read_text()
    assert "download.pytorch.org/whl/cpu" in text  # Binder is CPU-only: the small torch wheel


# every notebook: the badges in its title cell and the hosted-runtime set-up cell second


def test_notebook_badges_and_setup_cell_agree_with_pyproject():
    root = _checkout()
    cell = launch.setup_cell()
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        assert launch.badges(path.name) in "".join(cells[0]["source"]), path.name
        assert "".join(cells[1]["source"]) == cell, f"{path.name}: rerun apply_launch_cells.py"
