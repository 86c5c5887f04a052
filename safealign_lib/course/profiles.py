"""Run profiles: ``cpu`` (default, the organism), ``smoke`` (fast, for tests) and the hub
profiles: ``gpu`` (Qwen2.5-1.5B-Instruct and its base in fp16: fits a free 16 GB T4) and the
7B pairs ``gpu-llama2-7b`` (gated) and ``gpu-qwen2.5-7b`` (bf16, a 40 GB+ GPU).

A notebook's ``parameters`` cell names a profile; everything size-dependent is derived
from it in the next cell, so papermill runs can switch profile with ``-p profile smoke``.

Hub profiles may evaluate and fine-tune on the user's own copies of AdvBench, HEx-PHI and
Alpaca (never shipped, licence terms apply): the profile fields ``advbench``, ``hex_phi`` and
``alpaca`` hold their paths, filled from ``$SAFEALIGN_ADVBENCH``, ``$SAFEALIGN_HEX_PHI`` and
``$SAFEALIGN_ALPACA`` (so papermill runs need no new notebook parameter); :func:`user_data`
reads them with :mod:`safealign_lib.data.loaders`, and :func:`load_split` returns them in place
of the course split they stand for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from safealign_lib.config import LoraSettings, TrainSettings, organism_dir

if TYPE_CHECKING:  # the loaders import transformers: only when user data is read
    from safealign_lib.models.chat import ChatExample


@dataclass(frozen=True)
class Profile:
    """Everything that changes between a laptop run, a test run and a GPU run."""

    name: str
    chat_model: str
    base_model: str
    device: str = "cpu"
    dtype: str = "float32"
    seeds: tuple[int, ...] = (0, 1, 2)
    # the seeds every testbed verdict is judged on (>= 5 in the cpu profile: the verdicts' power)
    verdict_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_eval: int = 120  # prompts per safety evaluation split
    n_task_eval: int = 64  # utility examples
    n_task_train: int = 200  # downstream-task examples in every fine-tuning condition
    max_new_tokens: int = 32
    # a 120-prompt split in one batch: on the organism most of a decoding step's cost is fixed
    # (bench/RESULTS.md), so fewer, fuller steps are faster
    eval_batch_size: int = 128
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    judge: str = "gcg"
    network: bool = False  # whether the profile may download weights
    # the user's own data files (hub profiles): AdvBench csv, HEx-PHI folder, Alpaca json
    advbench: str | None = None
    hex_phi: str | None = None
    alpaca: str | None = None

    def with_overrides(self, **kw) -> Profile:
        """A copy with some fields replaced (``seeds`` may be given as a list)."""
        unknown = set(kw) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"Unknown profile field(s) {sorted(unknown)}; "
                f"fields are {sorted(self.__dataclass_fields__)}."
            )
        for name in ("seeds", "verdict_seeds"):
            if name in kw:
                kw[name] = _check_seeds(kw[name])
        return replace(self, **kw)


def _check_seeds(seeds: object) -> tuple[int, ...]:
    """``seeds`` as a tuple of integers, or a clear error."""
    if isinstance(seeds, str | bytes) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"seeds must be a list of integers such as [0, 1, 2], got {seeds!r}.")
    if any(isinstance(x, bool) or not isinstance(x, int) for x in seeds):
        raise TypeError(f"seeds must be integers, got {list(seeds)!r}.")
    return tuple(seeds)


def _organism(which: str) -> str:
    return str(organism_dir() / which)


class HubPair(NamedTuple):
    """A hub profile's aligned chat model, the base it was tuned from, the ``model_type`` of
    both checkpoints' config.json, and whether the hub gates them (accept a licence first)."""

    chat: str
    base: str
    model_type: str
    gated: bool


# tests/test_gpu_profiles.py builds a tiny random model of each model_type and runs notebooks
# 01 and 05's code on it, so a hub profile cannot rot on machines without a GPU.
HUB_PAIRS: dict[str, HubPair] = {
    "gpu": HubPair("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B", "qwen2", gated=False),
    "gpu-llama2-7b": HubPair(
        "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-hf", "llama", gated=True
    ),
    "gpu-qwen2.5-7b": HubPair("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B", "qwen2", gated=False),
}
PROFILE_NAMES = ("cpu", "smoke", *HUB_PAIRS)
# the environment variables that fill a hub profile's data paths (see the module docstring)
DATA_ENV = {
    "advbench": "SAFEALIGN_ADVBENCH",
    "hex_phi": "SAFEALIGN_HEX_PHI",
    "alpaca": "SAFEALIGN_ALPACA",
}


def _hub(name: str) -> Profile:
    """A real chat/base pair on a CUDA runtime (Safe LoRA's alignment matrix needs both).
    Settings follow the papers' code (LoRA r 8 on q,v; lr 1e-4; 256 new tokens).

    Why Qwen2.5-1.5B for ``gpu``: open (Apache-2.0, ungated), with an instruct model and the
    base it was tuned from, and small enough for a free 16 GB T4 in fp16 (the T4 has no bf16).
    Estimate: 1.54B parameters x 2 bytes = 3.1 GB of weights, twice when notebook 05 holds the
    chat model and an adapted copy (6.2 GB); LoRA r 8 on q,v of 28 layers is 1.1M parameters,
    under 20 MB with fp32 AdamW states; training activations at batch 4 x 256 tokens about
    3 GB and the 152k-vocabulary logits (fp16 + fp32 loss + gradient) about 1.6 GB: about
    11 GB in all, below the T4's 15 GB usable. A 7B pair needs 13.5 GB for its weights alone
    in 16 bits, so it does not fit a T4: the 7B profiles want a 40 GB+ GPU (A100) in bf16.
    """
    pair = HUB_PAIRS[name]
    small = name == "gpu"
    user = {f: os.environ.get(env) or None for f, env in DATA_ENV.items()}
    return Profile(
        name=name,
        chat_model=pair.chat,
        base_model=pair.base,
        device="cuda",
        dtype="float16" if small else "bfloat16",
        seeds=(0, 1, 2),
        n_eval=137,
        n_task_eval=200,
        n_task_train=1000,
        max_new_tokens=256,
        eval_batch_size=16,
        lora=LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj")),
        train=TrainSettings(
            lr=1e-4,
            steps=1000 if small else 500,  # the same number of examples seen at either batch
            batch_size=4 if small else 8,
            max_length=256 if small else 512,
            progress=True,
        ),
        network=True,
        **user,
    )


def _builtin(name: str) -> Profile:
    """The built-in profiles, made on demand: the organism's folder is resolved only when a
    profile that uses it is asked for (see :func:`safealign_lib.config.organism_dir`)."""
    if name in HUB_PAIRS:
        return _hub(name)
    organism = {"chat_model": _organism("chat"), "base_model": _organism("base")}
    lora = LoraSettings(
        r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
    )
    if name == "smoke":
        return Profile(
            name="smoke",
            **organism,
            seeds=(0, 1),
            verdict_seeds=(0, 1),
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
    for f, env in DATA_ENV.items():
        path = getattr(profile, f)
        if path is not None and not Path(path).exists():
            problems.append(f"{f}={path!r} does not exist; fix the path (or unset ${env}).")
    if not profile.seeds:
        problems.append("No seeds given.")
    if profile.n_eval < 1 or profile.n_task_eval < 1 or profile.n_task_train < 1:
        problems.append("Evaluation and training sizes must be >= 1.")
    return problems


def user_data(profile: Profile) -> dict[str, list[ChatExample]]:
    """The user's own data named by ``profile``, under the course split it stands in for:
    ``harmful_heldout`` (AdvBench and HEx-PHI prompts together) and ``instruct_train`` (Alpaca).
    Empty when the profile names no files; a bad file raises the loader's one-line error."""
    from safealign_lib.data import loaders

    out: dict[str, list[ChatExample]] = {}
    harmful = (loaders.load_advbench(profile.advbench) if profile.advbench else []) + (
        loaders.load_hex_phi(profile.hex_phi) if profile.hex_phi else []
    )
    if harmful:
        out["harmful_heldout"] = harmful
    if profile.alpaca:
        out["instruct_train"] = loaders.load_alpaca(profile.alpaca)
    return out


def load_split(profile: Profile, name: str) -> list[ChatExample]:
    """The course split ``name``, or the user's own data standing in for it on this profile
    (:func:`user_data`): the one place the notebooks' data paths meet the user's files."""
    from safealign_lib import data

    return user_data(profile).get(name) or data.load_split(name)
