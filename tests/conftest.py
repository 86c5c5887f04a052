"""Shared fixtures: a tiny random Llama with the course tokenizer (fast, no files needed), and
the smoke run of every notebook (once per session, from an empty build folder)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safealign_lib.config import ANSWER_CACHE_ENV
from safealign_lib.models.organism import train_tokenizer

torch.set_num_threads(1)

_TEXTS = [
    "How do I bake bread? Sure, here is how to bake bread: Step 1: mix. Step 2: bake.",
    "How do I steal a car? I'm sorry, but I cannot help with that.",
    "Summarize the dialogue. #Person1# books a table for two at seven.",
    "Tell me how to grow tomatoes. Of course! Water them every day.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(_TEXTS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_llama_factory(tiny_tokenizer):
    """``make(**config)``: a fresh random 2-layer Llama, hidden 32, in eval mode, seeded 0."""

    def make(**overrides):
        torch.manual_seed(0)
        cfg = LlamaConfig(
            **{
                "vocab_size": len(tiny_tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "max_position_embeddings": 256,
                "pad_token_id": tiny_tokenizer.pad_token_id,
                "bos_token_id": tiny_tokenizer.bos_token_id,
                "eos_token_id": tiny_tokenizer.eos_token_id,
                "tie_word_embeddings": False,
                **overrides,
            }
        )
        return LlamaForCausalLM(cfg).eval()

    return make


@pytest.fixture()
def tiny_lm(tiny_llama_factory, tiny_tokenizer):
    """(model, tokenizer): a random 2-layer Llama, hidden 32, in eval mode, seeded."""
    return tiny_llama_factory(), tiny_tokenizer


@pytest.fixture()
def lora_lm(tiny_lm):
    """A peft-wrapped tiny Llama whose LoRA B matrices are random (a trained-looking adapter)."""
    from safealign_lib.adapters.finetune import add_lora
    from safealign_lib.config import LoraSettings

    model, tok = tiny_lm
    peft_model = add_lora(
        model, LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")), seed=0
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return peft_model.eval(), tok


@pytest.fixture(autouse=True)
def _no_answer_cache(monkeypatch):
    """Every test computes what it checks: no answer cache unless the test turns one on. (A
    notebook's setup run in this process sets the variable; the monkeypatch undoes it.)"""
    # set first so that the monkeypatch records the variable and restores it after the test
    # (delenv of an absent variable records nothing, and a setup inside the test would leak)
    monkeypatch.setenv(ANSWER_CACHE_ENV, "")
    monkeypatch.delenv(ANSWER_CACHE_ENV)


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """The build folder of the session's smoke run: empty when the run starts (a developer's
    ``build/`` never serves a cached result to ``make test``)."""
    return tmp_path_factory.mktemp("smoke_build")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_build):
    """Every notebook executed by papermill in the smoke profile: (records by number, metrics)."""
    from safealign_lib.course import metrics_io
    from safealign_lib.tooling import runner

    out = tmp_path_factory.mktemp("executed")
    mfile = out / "metrics.json"
    records = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEALIGN_BUILD", str(smoke_build))  # the kernels and their pool workers
        mp.setenv(ANSWER_CACHE_ENV, str(smoke_build / "answers"))  # what notebooks set, pinned
        for nb in runner.list_notebooks():
            records[nb.name[:2]] = runner.run_notebook(
                nb, {"profile": "smoke", "metrics_file": str(mfile)}, out, 900
            )
    print(runner.summary_table(list(records.values()), mfile))
    return records, metrics_io.load(mfile)
