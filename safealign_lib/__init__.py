"""safealign_lib: the companion library of the SafeAlign course.

The methods are a library a researcher can import without the course; the course lives apart
in three layers, each importing only the layers above it (``tests/test_layout.py``).

Layout (one module or folder per concept):

- ``config``: settings dataclasses (LoRA, training) and path resolution; no torch.
- ``data``: one conversation turn (``data.example``), the generated world's words
  (``data.vocabulary``), the generator (``data.generator``), the splits on disk
  (``data.splits``), the testbed's skill, safety data and public-format readers
  (``data.loaders``: AdvBench, HEx-PHI, Alpaca, BeaverTails, DialogSum). No model code.
- ``models``: loading any causal LM (safetensors only), chat formatting, batched generation,
  and the model organism's builder.
- ``adapters``: LoRA fine-tuning through peft (any loss; the token-wise constrained objective),
  adapter files as (A, B, scale) factors, block and module naming, weights streamed from
  safetensors, forward hooks.
- ``evaluation``: judges, metrics (refusal rate, first-token refusal probability, ROUGE-L),
  reliability (AUARC), the :class:`~safealign_lib.evaluation.Evaluator`, seed tables, latency
  timing and the one verdict rule (``evaluation.criterion``).
- ``interp``: activations, linear probes, the refusal direction and the probe gate.
- ``methods``: ``salora`` (SaLoRA, a package along PEFT's lines), ``safelora`` (Safe LoRA),
  ``splora`` (SPLoRA) with ``diem`` (DIEM and E-DIEM), ``deep_alignment`` (recovery examples).
- ``course``: what a notebook needs at run time: profiles, set-up, the notebook contract,
  metrics I/O, the measurement cache, exercise checks, plot helpers.
- ``studies``: the experiment each notebook runs with the methods, and its figures.
- ``tooling``: the ``safealign`` command, the papermill runner, regression baselines, the site,
  time breakdowns, notebook checks and the workshop's exercise notebooks.

Vocabulary, used the same way in every module, notebook and document:

- **block**: one decoder layer of the transformer, indexed 0 … L−1 (``model.layers.3``).
- **module**: one adapted linear weight inside a block, named by the base model's weight
  (``model.layers.3.self_attn.q_proj.weight``); Safe LoRA projects and SPLoRA prunes modules.
- **site**: where a block's activations are read (``resid``, ``attn``, ``mlp``).
- **adapter**: a set of LoRA modules, stored as an adapter folder (safetensors).
- **condition**: a fine-tuning data recipe (``benign``, ``harmful10``, …).
- **profile**: the run settings (``cpu``, ``smoke``, ``gpu``).
- **split**: a named list of course examples (``harmful_heldout``, ``task_test``, …).

The papers say "layer" for blocks and modules alike. SaLoRA's API keeps its paper's word for
its per-module objects (``LayerFeatures``, ``collect_layer_inputs``, ``SafetyLayer``: one per
module); everywhere else a block is a block and a module a module.

Shapes follow PyTorch and PEFT: a linear weight is (d_out, d_in), ``lora_A`` is (r, d_in),
``lora_B`` is (d_out, r), and a module's update is ΔW = s·B·A with s = lora_alpha / r.
The methods' formulas and sources are in ``docs/methods.md``.
"""

import warnings

# Warnings every newcomer would otherwise see after each notebook, silenced by message (never
# wholesale): tqdm.auto's text-bar fallback without ipywidgets, and a transformers 5
# deprecation that peft triggers inside every LoRA wrap (nothing a user can change).
warnings.filterwarnings("ignore", message="IProgress not found")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

__version__ = "0.1.0"
