"""Interpretability: activations per block and site (:mod:`.activations`), linear probes
(:mod:`.probes`), the refusal direction (:mod:`.refusal_direction`) and the probe gate of
conditional steering (:mod:`.conditional`)."""
