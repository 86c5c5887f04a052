"""Interpretability: activations per block and site (:mod:`.activations`), linear probes
(:mod:`.probes`) and the refusal direction (:mod:`.refusal_direction`)."""
