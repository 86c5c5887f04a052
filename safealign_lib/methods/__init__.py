"""The methods the course studies, one module each: :mod:`.salora` (SaLoRA), :mod:`.safelora`
(Safe LoRA), :mod:`.splora` (SPLoRA) and :mod:`.diem` (DIEM and E-DIEM, the score SPLoRA uses).
None of them imports the course plumbing (:mod:`safealign_lib.course`)."""
