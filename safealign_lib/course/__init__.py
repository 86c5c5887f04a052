"""Course plumbing, apart from the methods: run profiles, notebook set-up, the notebook contract,
metrics I/O, the papermill runner, exercise checks, notebook tools, the fine-tuning conditions
and the ``safealign`` command. Importing this package imports nothing heavy."""
