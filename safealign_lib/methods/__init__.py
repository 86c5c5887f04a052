"""The methods the course studies, one module or package each: :mod:`.salora` (SaLoRA),
:mod:`.safelora` (Safe LoRA), :mod:`.splora` (SPLoRA), :mod:`.diem` (DIEM and E-DIEM, the score
SPLoRA uses) and :mod:`.deep_alignment` (safety recovery examples and realignment). None of them
imports the course (:mod:`safealign_lib.course`, :mod:`safealign_lib.studies`,
:mod:`safealign_lib.tooling`); ``tests/test_layout.py`` keeps it so."""
