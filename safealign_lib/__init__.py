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
- ``metrics_io``: the ``build/metrics.json`` contract.
"""

__version__ = "0.1.0"
