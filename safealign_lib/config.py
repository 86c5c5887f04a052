"""Settings and paths: pure dataclasses and path resolution, importable without torch or peft.

Paths resolve in this order: an explicit argument, then an environment variable, then the
repository checkout the package was installed from (``pip install -e .``):

- data folder (generated splits and the shipped organism): ``$SAFEALIGN_DATA``, else ``data/``;
- organism folder (``base/`` and ``chat/`` checkpoints): ``$SAFEALIGN_ORGANISM``, else
  ``<data folder>/organism``;
- build folder (adapters, executed notebooks, metrics): ``$SAFEALIGN_BUILD``, else ``build/``
  of the checkout (of the current directory when the package is not in a checkout).

A non-editable install (``pip install .``) has no checkout beside it: set ``SAFEALIGN_DATA`` to
a copy of the repository's ``data/`` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # peft is only needed when a LoRA config is actually built
    from peft import LoraConfig

PathLike = str | os.PathLike
# the folder of remembered answers and fine-tunes (safealign_lib.models.memo); unset: off
ANSWER_CACHE_ENV = "SAFEALIGN_ANSWER_CACHE"

# The checkout the package lives in, when it lives in one (``None`` for a site-packages install).
_CHECKOUT = Path(__file__).resolve().parent.parent
REPO_ROOT: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() else None


def data_dir(path: PathLike | None = None) -> Path:
    """The course data folder (holds ``splits/`` and ``organism/``)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("SAFEALIGN_DATA")
    if env:
        return Path(env).expanduser()
    if REPO_ROOT is None:
        raise FileNotFoundError(
            "The course data folder is unknown: safealign_lib is installed outside a checkout of "
            "the course. Set SAFEALIGN_DATA to the course's data/ folder (it holds splits/ and "
            "organism/), or install the package from its checkout with `pip install -e .`."
        )
    return REPO_ROOT / "data"


def organism_dir(path: PathLike | None = None) -> Path:
    """The organism folder (``base/`` and ``chat/``)."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("SAFEALIGN_ORGANISM")
    return Path(env).expanduser() if env else data_dir() / "organism"


def build_dir(path: PathLike | None = None) -> Path:
    """Where runs write their outputs: adapters, executed notebooks, metrics."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("SAFEALIGN_BUILD")
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT if REPO_ROOT is not None else Path.cwd()) / "build"


@dataclass
class LoraSettings:
    """peft LoRA hyper-parameters. The update is ΔW = (alpha / r) · B · A."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_peft(self) -> LoraConfig:
        """The equivalent ``peft.LoraConfig`` (imports peft)."""
        from peft import LoraConfig

        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainSettings:
    """Optimisation settings of one fine-tuning run."""

    lr: float = 1e-3
    steps: int = 60
    batch_size: int = 8
    seed: int = 0
    max_length: int = 256
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    progress: bool = True
    # "response": loss on the answer tokens only (the course); "all": on every token after the
    # first, prompt included (SaLoRA's released training script)
    loss_on: str = "response"
