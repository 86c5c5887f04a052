"""Run profiles: ``cpu`` (default, the organism), ``smoke`` (fast, for tests) and ``gpu``
(a real chat model and its base from the hub, bf16).

A notebook's ``parameters`` cell names a profile; everything size-dependent is derived
from it in the next cell, so papermill runs can switch profile with ``-p profile smoke``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from safealign_lib.config import LoraSettings, TrainSettings, organism_dir


@dataclass(frozen=True)
class Profile:
    """Everything that changes between a laptop run, a test run and a GPU run."""

    name: str
    chat_model: str
    base_model: str
    device: str = "cpu"
    dtype: str = "float32"
    seeds: tuple[int, ...] = (0, 1, 2)
    n_eval: int = 120  # prompts per safety evaluation split
    n_task_eval: int = 64  # utility examples
    n_task_train: int = 200  # downstream-task examples in every fine-tuning condition
    max_new_tokens: int = 32
    eval_batch_size: int = 64
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    judge: str = "gcg"
    network: bool = False  # whether the profile may download weights

    def with_overrides(self, **kw) -> Profile:
        """A copy with some fields replaced (``seeds`` may be given as a list)."""
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Unknown profile field(s) {sorted(unknown)}; "
                f"fields are {sorted(self.__dataclass_fields__)}."
            )
        if "seeds" in kw:
            seeds = kw["seeds"]
            if isinstance(seeds, str | bytes) or not hasattr(seeds, "__iter__"):
                raise TypeError(
                    f"seeds must be a list of integers such as [0, 1, 2], got {seeds!r}."
                )
            if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
                raise TypeError(f"seeds must be integers, got {list(seeds)!r}.")
            kw["seeds"] = tuple(seeds)
        return replace(self, **kw)


def _organism(which: str) -> str:
    return str(organism_dir() / which)


PROFILE_NAMES = ("cpu", "smoke", "gpu")


def _builtin(name: str) -> Profile:
    """The built-in profiles, made on demand: the organism's folder is resolved only when a
    profile that uses it is asked for (see :func:`safealign_lib.config.organism_dir`)."""
    if name == "gpu":
        # A real pair on a GPU runtime: the aligned chat model and the base it was aligned from
        # (Safe LoRA's alignment matrix needs both). Settings follow the papers' code.
        return Profile(
            name="gpu",
            chat_model="meta-llama/Llama-2-7b-chat-hf",
            base_model="meta-llama/Llama-2-7b-hf",
            device="cuda",
            dtype="bfloat16",
            seeds=(0, 1, 2),
            n_eval=137,
            n_task_eval=200,
            n_task_train=1000,
            max_new_tokens=256,
            eval_batch_size=16,
            lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj")),
            train=TrainSettings(lr=1e-4, steps=500, batch_size=8, max_length=512, progress=True),
            network=True,
        )
    organism = {"chat_model": _organism("chat"), "base_model": _organism("base")}
    lora = LoraSettings(
        r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    if name == "smoke":
        return Profile(
            name="smoke",
            **organism,
            seeds=(0, 1),
            n_eval=48,
            n_task_eval=24,
            n_task_train=120,
            max_new_tokens=28,
            lora=lora,
            train=TrainSettings(lr=2e-3, steps=50, batch_size=16, progress=False),
        )
    return Profile(
        name="cpu",
        **organism,
        lora=lora,
        train=TrainSettings(lr=2e-3, steps=70, batch_size=16, progress=False),
    )


def get_profile(name: str = "cpu", **overrides) -> Profile:
    """The named profile, with optional field overrides (``get_profile("cpu", seeds=[0])``)."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"Unknown profile {name!r}; choose one of {sorted(PROFILE_NAMES)}.")
    p = _builtin(name)
    return p.with_overrides(**overrides) if overrides else p


def validate(profile: Profile) -> list[str]:
    """Problems that would make the profile fail at run time (empty list: fine).

    Checks without loading anything: organism folders exist for local profiles, a GPU
    profile asks for a CUDA device, hub ids look like ``owner/name``, settings are sane.
    """
    problems = []
    for label, ref in (("chat_model", profile.chat_model), ("base_model", profile.base_model)):
        if profile.network:
            if ref.count("/") != 1 or ref.startswith(("/", ".")):
                problems.append(f"{label}={ref!r} is not a hub id of the form owner/name.")
        elif not (Path(ref) / "config.json").is_file():
            problems.append(f"{label}={ref!r} has no config.json; run `safealign organism build`.")
    if profile.network and not profile.device.startswith("cuda"):
        problems.append(
            "A hub-model profile expects device='cuda' (7B models are too slow on a CPU)."
        )
    if not profile.seeds:
        problems.append("No seeds given.")
    if profile.n_eval < 1 or profile.n_task_eval < 1 or profile.n_task_train < 1:
        problems.append("Evaluation and training sizes must be >= 1.")
    return problems
