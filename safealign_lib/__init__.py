"""safealign_lib: the companion library of the SafeAlign course.

One module per course concept:

- ``data``: the generated course data (requests, refusals, the downstream task, attack sets).
- ``loaders``: readers for public formats (AdvBench, HEx-PHI, Alpaca, BeaverTails, DialogSum).
- ``organism``: builds the tiny Llama model organism (tokenizer, base and chat checkpoints).
- ``models``: loads any causal LM by hub id or local path (safetensors only).
- ``profiles``: the ``cpu``, ``smoke`` and ``gpu`` run profiles.
- ``generation``: batched greedy generation.
- ``judges``: keyword refusal judges and the judge plug-in interface.
- ``evaluation``: refusal rate, first-token refusal probability, utility, seed aggregation.
- ``finetune``: deterministic LoRA fine-tuning through peft.
- ``conditions``: notebook 01's fine-tuning conditions and the adapter cache.
- ``activations``, ``probes``, ``refusal_direction``: where safety lives (notebook 02).
- ``salora``: SaLoRA's fixed safety module and task-specific initialisation (notebook 03).
- ``diem``, ``safelora``, ``splora``, ``reliability``: DIEM/E-DIEM scoring, Safe LoRA
  projection, SPLoRA pruning and reliability metrics (notebooks 04–05).
- ``exercises``: check functions for the notebooks' exercises.
- ``metrics_io``: the ``build/metrics.json`` contract; ``runner``: papermill execution.
- ``nbtools``: strip and shape-check notebooks; ``cli``: the ``safealign`` command.
"""

import warnings

# tqdm.auto falls back to text bars without ipywidgets; the warning it prints says nothing useful
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
