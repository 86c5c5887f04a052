"""The course's studies: the experiments each notebook runs with the methods, cached under
``build/``. One module per study: the fine-tuning conditions of notebook 01 and the testbed
(:mod:`.conditions`, :mod:`.testbed`), the organism's tour for notebook 00
(:mod:`.organism_tour`), SaLoRA's comparison and ablations for notebook 03
(:mod:`.salora_study`), the probe-transfer study (:mod:`.transfer`), the post-hoc repairs'
k-sweep, choice of k and ablation oracle for notebook 05 (:mod:`.repair`), what keeps safety
for notebook 06 (:mod:`.keep_safety`), the synthesis for notebook 07 (:mod:`.synthesis`) and
the notebooks' figures (:mod:`.figures`). The methods themselves (:mod:`safealign_lib.methods`)
import none of this."""
