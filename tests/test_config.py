"""Paths resolve from an argument, then an environment variable, then the checkout; the pure
modules import neither torch nor peft; a non-editable install finds the data it is pointed at."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from safealign_lib import config

REPO = Path(__file__).resolve().parents[1]


def test_paths_prefer_argument_then_environment_then_checkout(monkeypatch, tmp_path):
    for var in ("SAFEALIGN_DATA", "SAFEALIGN_ORGANISM", "SAFEALIGN_BUILD"):
        monkeypatch.delenv(var, raising=False)
    assert config.data_dir() == REPO / "data"
    assert config.organism_dir() == REPO / "data" / "organism"
    assert config.build_dir() == REPO / "build"
    monkeypatch.setenv("SAFEALIGN_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("SAFEALIGN_BUILD", str(tmp_path / "b"))
    assert config.data_dir() == tmp_path / "d"
    assert config.organism_dir() == tmp_path / "d" / "organism"  # follows the data folder
    assert config.build_dir() == tmp_path / "b"
    monkeypatch.setenv("SAFEALIGN_ORGANISM", str(tmp_path / "o"))
    assert config.organism_dir() == tmp_path / "o"
    assert config.data_dir(tmp_path / "x") == tmp_path / "x"
    assert config.build_dir("out") == Path("out")


PURE = [
    "safealign_lib.config",
    "safealign_lib.course.metrics_io",
    "safealign_lib.course.contract",
    "safealign_lib.course.profiles",
    "safealign_lib.course.setup",
]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_neither_torch_nor_peft(module):
    code = (
        f"import sys, {module}; "
        "print(','.join(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_methods_do_not_depend_on_the_course_plumbing():
    mods = [
        "methods.salora",
        "methods.safelora",
        "methods.splora",
        "methods.diem",
        "methods.deep_alignment",
        "interp.probes",
        "interp.refusal_direction",
        "interp.conditional",
        "data",
        "evaluation",
        "adapters.finetune",
    ]
    code = (
        "import sys\n"
        + "".join(f"import safealign_lib.{m}\n" for m in mods)
        + "course = ('safealign_lib.course', 'safealign_lib.studies', 'safealign_lib.tooling')\n"
        + "print(','.join(m for m in sys.modules if m.startswith(course)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_non_editable_install_finds_the_organism_through_the_data_path(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEALIGN_")}
    env["PYTHONPATH"] = str(site)
    code = (
        "import safealign_lib, json\n"
        "from safealign_lib import data, models\n"
        "from safealign_lib.course import profiles\n"
        "P = profiles.get_profile('cpu')\n"
        "m = models.load_model(P.chat_model)\n"
        "print(json.dumps({'file': safealign_lib.__file__, 'chat': P.chat_model,\n"
        "    'problems': profiles.validate(P), 'n': len(data.load_split('harmful_heldout')),\n"
        "    'layers': m.config.num_hidden_layers}))"
    )
    # without a data path, the installed copy says what to set
    bare = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert bare.returncode != 0 and "SAFEALIGN_DATA" in bare.stderr
    env["SAFEALIGN_DATA"] = str(REPO / "data")
    ok = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    info = json.loads(ok.stdout.strip().splitlines()[-1])
    assert info["file"].startswith(str(site))
    assert info["chat"] == str(REPO / "data" / "organism" / "chat")
    assert info["problems"] == [] and info["n"] > 0 and info["layers"] >= 2
