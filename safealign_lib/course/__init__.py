"""What the notebooks import at run time besides the methods: run profiles (:mod:`.profiles`),
notebook set-up (:mod:`.setup`, :mod:`.launch`), the notebook contract (:mod:`.contract`),
metrics I/O (:mod:`.metrics_io`), the measurement cache (:mod:`.cache`), exercise checks
(:mod:`.exercises`) and plot helpers (:mod:`.plots`). The studies each notebook runs are in
:mod:`safealign_lib.studies`, the command line and CI tools in :mod:`safealign_lib.tooling`.
Importing this package imports nothing heavy."""
