"""The methods the course studies, one module each: :mod:`.salora` (SaLoRA), :mod:`.safelora`
(Safe LoRA), :mod:`.splora` (SPLoRA), :mod:`.diem` (DIEM and E-DIEM, the score SPLoRA uses) and
:mod:`.repair` (the k-sweep, choose-k rule and ablation oracle of a post-hoc repair). None of
them imports the course plumbing (:mod:`safealign_lib.course`)."""
