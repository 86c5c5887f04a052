"""The runner (tooling/runner.py): parameters from -p and YAML files, routed to the notebooks
that declare them; a failing notebook named with its cell and error."""

import pytest

from safealign_lib.tooling import runner


def test_values_are_yaml_literals_and_files_come_first(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("seeds: [3]\nretrain: true\nk_grid: [1, 4]\n")
    got = runner.parse_params([("seeds", "[0, 1]"), ("device", "cpu"), ("r_s", "null")], [f])
    assert got == {"seeds": [0, 1], "retrain": True, "k_grid": [1, 4], "device": "cpu", "r_s": None}


@pytest.mark.parametrize(
    ("text", "match"), [("- 1\n- 2\n", "maps names to values"), ("a: [1,\n", "not valid YAML")]
)
def test_bad_parameter_files_are_named(tmp_path, text, match):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        runner.parse_params([], [f])
    with pytest.raises(FileNotFoundError, match="--params"):
        runner.parse_params([], [tmp_path / "none.yaml"])


def test_parameters_go_only_to_the_notebooks_that_declare_them():
    nbs = runner.list_notebooks(["00", "01"])
    routed = runner.route_parameters(nbs, {"seeds": [0, 1], "seed": 3})
    assert routed[nbs[0]] == {"seed": 3} and routed[nbs[1]] == {"seeds": [0, 1]}
    with pytest.raises(ValueError, match=r"\['sedes'\]"):
        runner.route_parameters(nbs, {"sedes": [0]})
    with pytest.raises(ValueError, match="--profile"):
        runner.run_course("smoke", ["00"], extra={"profile": "cpu"})


def test_a_failing_notebook_is_named_with_its_cell_and_error(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
    ]
    src = tmp_path / "src" / "99_broken.ipynb"
    src.parent.mkdir()
    nbformat.write(nb, src)
    with pytest.raises(runner.NotebookFailed) as err:
        runner.run_notebook(src, {"x": 2}, tmp_path / "out", 60)
    e = err.value
    assert (e.notebook, e.ename, e.evalue) == ("99_broken.ipynb", "ValueError", "broken on purpose")
    # cell 2 of the executed copy: papermill inserts its injected-parameters cell after cell 0
    assert e.cell_index == 2 and "cell 2 (raise ValueError" in str(e)


def test_two_runs_never_share_kernel_sockets():
    # the IPC sockets used to be files named kernel-ipc-<n> in notebooks/, shared by two runs
    # started from one checkout (their kernels answered each other: "Invalid Signature")
    import os

    from traitlets.config import Config

    a, b = runner._kernel_config(Config), runner._kernel_config(Config)
    if os.name == "posix":
        assert a.KernelManager.transport == "ipc"
        assert a.KernelManager.ip != b.KernelManager.ip
        assert os.path.isabs(a.KernelManager.ip)


def test_the_runner_s_wall_time_replaces_the_notebook_s(tmp_path):
    from safealign_lib.course import metrics_io

    mfile = tmp_path / "metrics.json"
    metrics_io.record("04", {"wall_s": 6.5, "x": 1.0}, mfile, strict=False)
    metrics_io.record_wall_time("04", 14.1, mfile)
    assert metrics_io.load(mfile)["04"] == {"wall_s": 14.1, "x": 1.0}
    with pytest.raises(KeyError, match="recorded no metrics"):
        metrics_io.record_wall_time("05", 1.0, mfile)
