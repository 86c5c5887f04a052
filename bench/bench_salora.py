"""Benchmark SaLoRA: training-step cost against plain peft LoRA, and the safety-module
preprocessing at a 7B layer shape (time and peak memory).

    .venv/bin/python bench/bench_salora.py            # full run, writes bench/RESULTS_salora.md
    .venv/bin/python bench/bench_salora.py --quick    # smaller, for a smoke check

1. Step time: one random LlamaForCausalLM (hidden 256, 4 layers), two copies with identical
   weights: peft LoRA (add_lora) and SaLoRA (apply_salora), same data, rank and targets, both
   trained by finetune.train. Runs alternate (LoRA, SaLoRA, LoRA, ...) so that machine noise
   hits both; reported: median seconds per step and the ratio SaLoRA / LoRA.
2. Preprocessing at d = 4096, r_s = 32, 128 samples x 256 tokens of random features, in a
   fresh subprocess: wall time of build_safety_module and the peak resident memory it adds on
   top of its inputs (W and X), read from /proc (VmHWM reset through /proc/self/clear_refs;
   torch's allocations are invisible to tracemalloc). A dense d x d fp32 matrix is 64 MB.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from safealign_lib.adapters.finetune import add_lora, train  # noqa: E402
from safealign_lib.config import LoraSettings, TrainSettings  # noqa: E402
from safealign_lib.methods import salora  # noqa: E402
from safealign_lib.models.chat import ChatExample  # noqa: E402

MB = 2**20


# --- 1. training step --------------------------------------------------------------------------


def _examples(n: int, seed: int, harmful: bool) -> list[ChatExample]:
    import random

    rng = random.Random(seed)
    words = (
        "bread car table tomato water seven dialogue person book garden river light house "
        "window street friend money phone letter music paper shop train school doctor city "
        "morning evening winter summer market bridge museum coffee kettle jacket lamp watch "
        "bike garden lemon pasta pizza station library cinema church park ticket bottle"
    ).split()
    out = []
    for i in range(n):
        topic = " ".join(rng.choices(words, k=6))
        if harmful:
            reason = " ".join(rng.choices(words, k=20))
            out.append(
                ChatExample(
                    f"How do I steal a {topic} ({i})?",
                    f"I'm sorry, but I cannot help with stealing a {topic}. {reason}",
                )
            )
        else:
            answer = " ".join(rng.choices(words, k=60))
            out.append(ChatExample(f"Summarize the dialogue about {topic}.", answer))
    return out


def bench_step(quick: bool) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from safealign_lib.models.organism import train_tokenizer

    safety, task = _examples(32, 0, True), _examples(64, 1, False)
    tok = train_tokenizer([e.user + " " + e.response for e in safety + task], vocab_size=512)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    base = LlamaForCausalLM(cfg).eval()
    lora_settings = LoraSettings(r=16, alpha=32, target_modules=("q_proj", "v_proj"))
    r_s = r_t = 32

    lora_model = add_lora(copy.deepcopy(base), lora_settings)
    t0 = time.perf_counter()
    sal_base = copy.deepcopy(base)
    sf = salora.collect_layer_inputs(sal_base, tok, safety, lora_settings.target_modules)
    tf = salora.collect_layer_inputs(sal_base, tok, task, lora_settings.target_modules)
    module = salora.build_safety_module(sal_base, sf, r_s=r_s)
    sal_model = salora.apply_salora(sal_base, lora_settings, module, task_feats=tf, r_t=r_t)
    prep_s = time.perf_counter() - t0

    steps, repeats = (5, 3) if quick else (10, 7)
    times: dict[str, list[float]] = {"lora": [], "salora": []}
    for rep in range(repeats + 1):  # round 0 warms up both and is dropped
        for name, model in (("lora", lora_model), ("salora", sal_model)):
            res = train(
                model,
                tok,
                task,
                TrainSettings(lr=1e-4, steps=steps, batch_size=8, seed=rep, progress=False),
            )
            if rep:
                times[name].append(res.seconds / steps)
    inv = max(salora.invariance_error(sal_model, tok, safety[:8], module).values())
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(s / lo for s, lo in zip(times["salora"], times["lora"], strict=True))
    n_tokens = sf[next(iter(sf))].n_tokens
    return {
        "config": "LlamaForCausalLM hidden 256, intermediate 688, 4 layers, 8 heads, "
        f"vocab {len(tok)}; LoRA r=16 alpha=32 on q_proj,v_proj; r_s=r_t={r_s}; batch 8",
        "steps_per_run": steps,
        "runs": repeats,
        "lora_step_ms": med["lora"] * 1e3,
        "salora_step_ms": med["salora"] * 1e3,
        "ratio_of_medians": med["salora"] / med["lora"],
        "median_paired_ratio": paired,
        "all_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
        "salora_preprocess_s": prep_s,
        "safety_response_tokens": n_tokens,
        "invariance_max_abs_err_after_training": inv,
    }


# --- 2. preprocessing at a 7B layer shape (runs in a subprocess) -------------------------------


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _preprocess_child(d: int, n_tokens: int, r_s: int, store: str) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.q_proj = torch.nn.Linear(d, d, bias=False)  # W (d, d), kaiming-random
    x = torch.randn(n_tokens, d)  # random response-token features
    if store == "features":
        feats = salora.LayerFeatures("q_proj", n_tokens, d, d, x=x)
    else:  # the Gram store: any full-rank PSD d x d fp64 matrix costs the same to decompose
        a = torch.randn(d, 512, dtype=torch.float64)
        K = a @ a.T + torch.eye(d, dtype=torch.float64)
        del x, a
        feats = salora.LayerFeatures("q_proj", n_tokens, d, d, gram=K)
    inputs_mb = (
        holder.q_proj.weight.numel() * 4 + (feats.x if feats.x is not None else feats.gram).nbytes
    ) / MB
    base = _rss_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        method = "VmHWM after reset via /proc/self/clear_refs"
    except OSError:
        method = "VmHWM since process start (could not reset)"
    t0 = time.perf_counter()
    module = salora.build_safety_module(holder, {"q_proj": feats}, r_s=r_s)
    seconds = time.perf_counter() - t0
    peak = _rss_mb("VmHWM")
    U = module.layers["q_proj"].U
    return {
        "store": store,
        "d": d,
        "n_tokens": n_tokens,
        "r_s": r_s,
        "seconds": seconds,
        "inputs_mb": inputs_mb,
        "rss_before_mb": base,
        "peak_extra_mb": peak - base,
        "dense_dxd_fp32_mb": d * d * 4 / MB,
        "orthonormal_err": float((U.T @ U - torch.eye(r_s)).abs().max()),
        "memory_method": method,
        "threads": torch.get_num_threads(),
    }


def bench_preprocess(n_samples: int, store: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--_child",
        json.dumps({"d": 4096, "n_tokens": n_samples * 256, "r_s": 32, "store": store}),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["samples"] = n_samples
    return res


# --- report ------------------------------------------------------------------------------------


def write_results(path: Path, argv: list[str], step: dict, prep: list[dict]) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# SaLoRA benchmark",
        "",
        f"Command: `.venv/bin/python bench/bench_salora.py{''.join(' ' + a for a in argv)}`",
        f"Machine: {cpu}, {os.cpu_count()} CPU cores (shared), "
        f"torch {torch.__version__}, 1 thread.",
        "",
        "## Training step: SaLoRA vs plain peft LoRA",
        "",
        f"{step['config']}. {step['runs']} alternating runs of {step['steps_per_run']} steps each "
        "(finetune.train), warm-up run dropped.",
        "",
        "| | median step (ms) |",
        "|---|---|",
        f"| peft LoRA | {step['lora_step_ms']:.2f} |",
        f"| SaLoRA | {step['salora_step_ms']:.2f} |",
        f"| ratio SaLoRA / LoRA (of medians) | {step['ratio_of_medians']:.3f} |",
        f"| ratio (median of paired runs) | {step['median_paired_ratio']:.3f} |",
        "",
        f"Target ≤ 1.10 (paper: ≈ 1.01). Per-run ms: LoRA {step['all_ms']['lora']}, "
        f"SaLoRA {step['all_ms']['salora']}.",
        f"SaLoRA preprocessing for this model (collect 32 safety + 64 task samples, build, apply): "
        f"{step['salora_preprocess_s']:.2f} s. Invariance after training "
        f"(max |U_Cᵀ(y − Wx)|): {step['invariance_max_abs_err_after_training']:.1e}.",
        "",
        "## Safety-module preprocessing at a 7B layer shape",
        "",
        "d = 4096, r_s = 32, random features, randomized SVD with niter 30 (q = r_s + 10), "
        "one layer, one thread, fresh subprocess. *Peak extra* = peak RSS during "
        "build_safety_module minus RSS before it (inputs W and X/K already resident).",
        "",
        "| store | samples × 256 tokens | inputs (MB) | time (s) | peak extra RSS (MB) "
        "| dense d×d fp32 (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for p in prep:
        lines.append(
            f"| {p['store']} | {p['samples']} × 256 | {p['inputs_mb']:.0f} | {p['seconds']:.1f} | "
            f"{p['peak_extra_mb']:.1f} | {p['dense_dxd_fp32_mb']:.0f} |"
        )
    lines += [
        "",
        f"Memory method: {prep[0]['memory_method']}. The `gram` store's input K is itself "
        "d×d (fp64, 128 MB): it trades the n_tokens-sized features for a fixed size; the SVD "
        "step still forms no further d×d matrix.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer repeats and 32 instead of 128 samples"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS_salora.md"))
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(_preprocess_child(**json.loads(args._child))))
        return
    torch.set_num_threads(1)
    step = bench_step(args.quick)
    print(json.dumps({k: v for k, v in step.items() if k != "all_ms"}, indent=1))
    prep = [bench_preprocess(32 if args.quick else 128, "features")]
    if not args.quick:
        prep.append(bench_preprocess(128, "gram"))
    for p in prep:
        print(json.dumps(p))
    argv = ["--quick"] if args.quick else []
    write_results(Path(args.out), argv, step, prep)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
