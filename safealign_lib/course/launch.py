"""One-click launch: Binder and Colab badges, and the set-up a hosted notebook needs.

The repository's URL lives in one place, ``[project.urls] Repository`` of ``pyproject.toml``;
the README's badges, each notebook's badge line and its first code cell (:func:`setup_cell`)
are generated from it, and tests check that they agree.

On Colab or Kaggle a notebook opened from GitHub arrives alone: its first code cell clones the
repository (for the course data and the organism), puts the checkout on ``sys.path`` and calls
:func:`colab_setup`, which installs the package's loose requirements from ``pyproject.toml``
(the runtime's own CUDA torch is kept: the root ``requirements.txt`` pins a CPU torch, which
would download gigabytes there). Everywhere else the cell and :func:`colab_setup` do nothing.

Pure Python: importing this module imports neither torch nor peft.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from safealign_lib.config import REPO_ROOT

DIST = "safealign-lib"  # the distribution name in pyproject.toml
BINDER_BADGE = "https://mybinder.org/badge_logo.svg"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository_url() -> str:
    """``[project.urls] Repository`` of pyproject.toml (of the installed metadata outside a
    checkout, or on Python 3.10, which has no TOML reader)."""
    if REPO_ROOT is not None and sys.version_info >= (3, 11):
        import tomllib

        urls = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["urls"]
        return urls["Repository"].rstrip("/")
    for entry in metadata.metadata(DIST).get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip().rstrip("/")
    raise LookupError(f"{DIST} declares no Repository URL; add it to [project.urls].")


def owner_and_name(url: str | None = None) -> tuple[str, str]:
    """(owner, repository) of a GitHub URL (default: :func:`repository_url`)."""
    url = url or repository_url()
    prefix = "https://github.com/"
    parts = url.removeprefix(prefix).removesuffix(".git").strip("/").split("/")
    if not url.startswith(prefix) or len(parts) != 2 or not all(parts):
        raise ValueError(
            f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME); "
            "Binder and Colab launch from GitHub: fix [project.urls] Repository in pyproject.toml."
        )
    return parts[0], parts[1]


def binder_url(notebook: str, url: str | None = None, folder: str = "notebooks") -> str:
    """The Binder link that opens ``<folder>/<notebook>`` in JupyterLab."""
    owner, name = owner_and_name(url)
    path = quote(f"{folder}/{notebook}", safe="")
    return f"https://mybinder.org/v2/gh/{owner}/{name}/HEAD?labpath={path}"


def colab_url(notebook: str, url: str | None = None, folder: str = "notebooks") -> str:
    """The Colab link that opens ``<folder>/<notebook>`` from the main branch."""
    owner, name = owner_and_name(url)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{folder}/{notebook}"


def badges(notebook: str, url: str | None = None, folder: str = "notebooks") -> str:
    """One markdown line: a Binder and a Colab badge that open ``<folder>/<notebook>``
    (``folder="exercises"`` for the workshop's exercise notebooks)."""
    return (
        f"[![Binder]({BINDER_BADGE})]({binder_url(notebook, url, folder)}) "
        f"[![Open In Colab]({COLAB_BADGE})]({colab_url(notebook, url, folder)})"
    )


def setup_cell(url: str | None = None) -> str:
    """The source of every notebook's first code cell: self-contained (the package is not
    installed yet when it runs on Colab), plain Python (ruff-clean, no ``!pip`` magic), and a
    no-op outside Colab and Kaggle."""
    url = url or repository_url()
    folder = owner_and_name(url)[1]
    return (
        "# On Colab or Kaggle: fetch the course and install it (elsewhere this does nothing)\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ:\n'
        f'    url = "{url}"\n'
        f'    if not os.path.isdir("{folder}"):\n'
        '        subprocess.run(["git", "clone", "--depth", "1", url], check=True)\n'
        f'    sys.path.insert(0, os.path.abspath("{folder}"))\n'
        "    from safealign_lib.course.launch import colab_setup\n"
        "\n"
        f'    colab_setup("{folder}")'
    )


def on_hosted_runtime() -> bool:
    """Whether this kernel runs on Colab (``google.colab`` importable) or Kaggle."""
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no ``google`` package at all
        return False


def colab_setup(
    checkout: str | os.PathLike | None = None, *, run: Callable[..., object] | None = None
) -> bool:
    """On Colab or Kaggle: clone the repository into ``checkout`` (default: its name, in the
    current folder) unless it is there, install the package from it with pyproject's loose
    requirements (``pip install -e``, keeping the runtime's torch), and point the course at
    the checkout's data. Returns True; elsewhere does nothing and returns False.

    ``run`` runs the commands (default: ``subprocess.run``)."""
    if not on_hosted_runtime():
        return False
    run = run or subprocess.run
    root = Path(checkout or REPO_ROOT or owner_and_name()[1]).resolve()
    if not (root / "pyproject.toml").is_file():
        run(["git", "clone", "--depth", "1", repository_url(), str(root)], check=True)
    # pyproject's requirements, not requirements.txt: its CPU torch pin would replace CUDA torch
    run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(root)], check=True)
    if str(root) not in sys.path:  # an editable install is seen by new kernels only
        sys.path.insert(0, str(root))
    os.environ.setdefault("SAFEALIGN_DATA", str(root / "data"))
    print(f"SafeAlign course installed from {root}; data in {os.environ['SAFEALIGN_DATA']}.")
    return True
