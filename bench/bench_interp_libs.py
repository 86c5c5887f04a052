"""Hand-written hooks against nnsight and steering-vectors: same numbers, and how fast.

    PYTHONPATH=/tmp/extlibs .venv/bin/python bench/bench_interp_libs.py [--repeats 15] [--n 64]

The libraries are not course dependencies; install them outside the course's environment, e.g.
``.venv/bin/python -m pip install --target /tmp/extlibs --no-deps nnsight steering-vectors
greenlet zstandard`` (``--no-deps``: steering-vectors requires transformers<5). A library that
cannot be imported is skipped with the reason, one that fails at run time is reported with
its error.

On the course's organism (the cpu profile's chat model), one torch thread, variants alternating
within every repeat, medians:

(a) capture: the residual stream after every block at the last prompt token of ``--n``
    prompts of ``harmful_heldout`` (batches of 16). Course: ``interp.activations.
    capture_activations`` (sites=["resid"]). Libraries: the same left-padded batches and
    position ids (the course's ``_encode_batch``), captured by ``nnsight.NNsight.trace`` or
    ``steering_vectors.record_activations``; and the course's own hooks in that same loop,
    which separates the hook mechanism from the rest of ``capture_activations``. Reported:
    max |variant − course| over the ``(layers, n, d)`` array.
(b) addition: ``alpha · r`` added to the residual stream after block ``--layer``, where ``r`` is
    the course's refusal direction of that layer (difference of the means of the captures of
    ``harmful_heldout`` and ``benign_heldout``). Course: ``interp.refusal_direction.
    add_direction``; libraries: ``SteeringVector.apply`` and an nnsight trace that edits the
    layer's output. Two positions as the course defines them: "all" (every token) and "last"
    (the last prompt token only). Forward pass: the logits of ``--n`` benign prompts,
    max |diff|. Generation: the course's greedy decoder (``models.generation.generate``)
    on ``--n-gen`` benign prompts, answers equal to the course's (count).

nnsight wraps a deep copy of the model: ``NNsight(model)`` replaces the ``forward`` of every
submodule by its own controller for the model's lifetime, which would otherwise put the
course's variants through nnsight too.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from safealign_lib import data, models
from safealign_lib.course.profiles import get_profile
from safealign_lib.interp import activations as A
from safealign_lib.interp import refusal_direction as rd
from safealign_lib.models import generation


def try_import(name: str) -> tuple[object | None, str, float]:
    """(module or None, version or the reason it is missing, import seconds)."""
    t = time.perf_counter()
    try:
        mod = importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - any import failure is a result to print
        return None, f"skipped, not importable ({type(err).__name__}: {err})", 0.0
    return mod, getattr(mod, "__version__", "?"), time.perf_counter() - t


def batches(tok, examples, size: int = 16):
    """The course's left-padded prompt batches with its explicit position ids."""
    out = []
    for start in range(0, len(examples), size):
        batch, _ = A._encode_batch(tok, examples[start : start + size], "last")
        mask = batch["attention_mask"]
        out.append(
            dict(
                input_ids=batch["input_ids"],
                attention_mask=mask,
                position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                use_cache=False,
            )
        )
    return out


def timed(variants: dict[str, Callable], repeats: int) -> tuple[dict, dict, dict]:
    """Run every variant once (its result; an error drops it), then ``repeats`` alternating
    rounds. Returns (results, median seconds, errors)."""
    results, errors, times = {}, {}, {}
    for name, fn in list(variants.items()):
        try:
            results[name] = fn()
            times[name] = []
        except Exception as err:  # noqa: BLE001 - a failing library is a result to report
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    for _ in range(repeats):
        for name in times:
            t = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t)
    return results, {k: statistics.median(v) for k, v in times.items()}, errors


def report(title: str, results, med, errors, compare: Callable, unit: str) -> None:
    base = next(iter(med))
    print(f"\n### {title}\n")
    print(f"| variant | {unit} | time / course | same numbers |\n|---|---|---|---|")
    for name, s in med.items():
        print(
            f"| {name} | {s * 1e3:.1f} | {s / med[base]:.2f} | "
            f"{compare(results[name], results[base])} |"
        )
    for name, err in errors.items():
        print(f"| {name} | failed: {err} | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--n", type=int, default=64, help="prompts for capture and forward")
    ap.add_argument("--n-gen", type=int, default=32, help="prompts for generation")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*never reached.*")  # nnsight's open loops

    nnsight, nn_info, nn_import = try_import("nnsight")
    sv, sv_info, sv_import = try_import("steering_vectors")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {importlib.import_module('transformers').__version__}, "
        f"{platform.machine()}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"nnsight: {nn_info} (import {nn_import:.2f} s); "
        f"steering-vectors: {sv_info} (import {sv_import:.2f} s)"
    )

    P = get_profile(args.profile)
    tok = models.load_tokenizer(P.chat_model)
    model = models.load_model(P.chat_model).eval()
    harmful = data.load_split("harmful_heldout")[: args.n]
    benign = data.load_split("benign_heldout")[: args.n]
    L, alpha = args.layer, args.alpha
    n_layers = len(A.resolve_layers(model, None))
    benign_batches = batches(tok, benign)
    lm = None
    if nnsight is not None:
        t = time.perf_counter()
        lm = nnsight.NNsight(copy.deepcopy(model))
        print(f"nnsight: NNsight(deepcopy(model)) {time.perf_counter() - t:.3f} s")

    # (a) capture ---------------------------------------------------------------------------
    def course_capture(m=model, ex=harmful):
        return A.capture_activations(
            m, tok, ex, sites=["resid"], batch_size=16, progress=False
        ).features["resid"]

    def hooks_capture():
        rows: dict[int, torch.Tensor] = {}
        out = []

        def make(i):
            def hook(_module, _args, output):
                rows[i] = A.first_output(output)[:, -1].float()

            return hook

        layers = [A.site_module(model, i, "resid") for i in range(n_layers)]
        with torch.no_grad(), A.forward_hooks([(m, make(i)) for i, m in enumerate(layers)]):
            for kw in batches(tok, harmful):
                model(**kw)
                out.append(torch.stack([rows[i] for i in range(n_layers)]).numpy())
        return np.concatenate(out, axis=1)

    def nn_capture():
        out = []
        with torch.no_grad():
            for kw in batches(tok, harmful):
                with lm.trace(**kw):
                    feats = nnsight.save(
                        [lm.model.layers[i].output[:, -1] for i in range(n_layers)]
                    )
                out.append(torch.stack(feats).float().numpy())
        return np.concatenate(out, axis=1)

    def sv_capture():
        with (
            torch.no_grad(),
            sv.record_activations(
                model, layer_type="decoder_block", clone_activations=False
            ) as rec,
        ):
            n_batches = 0
            for kw in batches(tok, harmful):
                model(**kw)
                n_batches += 1
        out = [
            torch.stack([rec[i][b][:, -1] for i in range(n_layers)]).numpy()
            for b in range(n_batches)
        ]
        return np.concatenate(out, axis=1)

    cap = {
        "course (capture_activations)": course_capture,
        "course hooks in the libraries' loop": hooks_capture,
    }
    if lm is not None:
        cap["nnsight (trace, .output[:, -1])"] = nn_capture
    if sv is not None:
        cap["steering-vectors (record_activations)"] = sv_capture
    res, med, err = timed(cap, args.repeats)
    report(
        f"(a) capture: resid, {n_layers} layers × {len(harmful)} prompts, last token",
        res,
        med,
        err,
        lambda a, b: f"max abs diff {np.abs(a - b).max():.1e}",
        "ms",
    )

    # the course's refusal direction of layer L --------------------------------------------
    dirs = rd.refusal_directions(
        A.capture_activations(model, tok, harmful, sites=["resid"], progress=False),
        A.capture_activations(model, tok, benign, sites=["resid"], progress=False),
    )
    r = torch.as_tensor(dirs[L])
    v = alpha * r
    print(
        f"\ndirection: course refusal direction, layer {L}, ||r|| = {float(r.norm()):.2f}, "
        f"alpha = {alpha}"
    )

    # (b1) forward pass with the direction added -------------------------------------------
    def logits_of(m):
        with torch.no_grad():
            return [m(**kw).logits for kw in benign_batches]

    def course_fwd(positions):
        def run():
            with rd.add_direction(model, r, L, alpha, positions=positions):
                return logits_of(model)

        return run

    def sv_fwd(positions):
        vec = sv.SteeringVector({L: v})
        # apply() defaults min_token_index=0, which it refuses together with token_indices
        kw = {} if positions == "all" else {"min_token_index": None, "token_indices": [-1]}

        def run():
            with vec.apply(model, **kw):
                return logits_of(model)

        return run

    def nn_fwd(positions):
        def run():
            out = []
            with torch.no_grad():
                for kw in benign_batches:
                    with lm.trace(**kw):
                        if positions == "all":
                            lm.model.layers[L].output = lm.model.layers[L].output + v
                        else:
                            lm.model.layers[L].output[:, -1] += v
                        logits = nnsight.save(lm.output.logits)
                    out.append(logits)
            return out

        return run

    def max_diff(a, b):
        return (
            f"max abs diff {max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)):.1e}"
        )

    plain = logits_of(model)
    for positions in ("all", "last"):
        fwd = {f"course (add_direction, {positions})": course_fwd(positions)}
        if lm is not None:
            fwd["nnsight (trace, edit .output)"] = nn_fwd(positions)
        if sv is not None:
            fwd["steering-vectors (SteeringVector.apply)"] = sv_fwd(positions)
        res, med, err = timed(fwd, args.repeats)
        effect = max_diff(next(iter(res.values())), plain).replace("max abs diff ", "")
        report(
            f"(b) forward, direction added at layer {L}, positions={positions!r}: logits of "
            f"{len(benign)} prompts (the addition itself moves them by up to {effect})",
            res,
            med,
            err,
            max_diff,
            "ms",
        )

    # (b2) generation with the direction added (the course's greedy decoder) ----------------
    prompts = benign[: args.n_gen]

    def decode(m, ex=prompts):
        return generation.generate(m, tok, ex, args.new_tokens, 16, progress=False).texts

    def course_gen(positions):
        def run():
            with rd.add_direction(model, r, L, alpha, positions=positions):
                return decode(model)

        return run

    def sv_gen(positions, skip_steps=False):
        vec = sv.SteeringVector({L: v})
        kw = {} if positions == "all" else {"min_token_index": None, "token_indices": [-1]}
        if skip_steps:  # the course's "last": leave the one-token decoding steps alone
            kw["operator"] = lambda x, t: t if x.shape[1] > 1 else torch.zeros_like(t)

        def run():
            with vec.apply(model, **kw):
                return decode(model)

        return run

    def nn_gen(positions, every_prompt=True):
        def driver(ex):
            return decode(lm._module, ex)

        def run():
            with lm.trace(fn=driver) as tracer:  # the result is read in an invoke of its own
                with tracer.invoke(prompts):
                    if positions == "all":  # every forward of the decode loop
                        for _step in tracer.all():
                            lm.model.layers[L].output = lm.model.layers[L].output + v
                    elif every_prompt:  # the last token of every prompt pass (one a batch)
                        for _step in tracer.all():
                            if lm.model.layers[L].output.shape[1] > 1:
                                lm.model.layers[L].output[:, -1] += v
                    else:  # the idiom without a loop: the first forward only
                        lm.model.layers[L].output[:, -1] += v
                with tracer.invoke():
                    texts = nnsight.save(tracer.result)
            return texts

        return run

    base_texts = decode(model)
    for positions in ("all", "last"):
        gen = {f"course (add_direction, {positions})": course_gen(positions)}
        if lm is not None:
            gen["nnsight (trace over the decoder, tracer.all())"] = nn_gen(positions)
            if positions == "last":
                gen["nnsight (no loop: first forward only)"] = nn_gen(positions, False)
        if sv is not None:
            if positions == "all":
                gen["steering-vectors (SteeringVector.apply)"] = sv_gen(positions)
            else:
                gen["steering-vectors (token_indices=[-1])"] = sv_gen(positions)
                gen["steering-vectors (+ operator skipping 1-token steps)"] = sv_gen(
                    positions, True
                )
        res, med, err = timed(gen, args.repeats)
        changed = sum(a != b for a, b in zip(next(iter(res.values())), base_texts, strict=True))
        report(
            f"(b) generation, positions={positions!r}: {len(prompts)} prompts, "
            f"{args.new_tokens} new tokens ({changed}/{len(prompts)} answers changed by "
            "the addition)",
            res,
            med,
            err,
            lambda a, b: f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(b)} answers equal",
            "ms",
        )


if __name__ == "__main__":
    main()
