"""The course's tooling, run from the command line and by CI, never imported by a notebook:
the ``safealign`` command (:mod:`.cli`), the papermill runner (:mod:`.runner`), regression
comparisons against baselines (:mod:`.regress`) with their provenance (:mod:`.provenance`),
the static site (:mod:`.site`), per-notebook time breakdowns (:mod:`.breakdown`), notebook
checks (:mod:`.nbtools`) and the workshop's exercise notebooks (:mod:`.workshop`)."""
