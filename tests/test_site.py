"""The static site: pages and the course map from executed notebooks (the browser test, on the
smoke run's executed notebooks, is in test_notebooks.py)."""

import base64
import io
import json

import nbformat
import pytest

from safealign_lib.tooling import site


def _png() -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _executed(folder, error=False):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "# 07 · A test notebook\n\n**Time:** about 1 minute; 5 to read.\n\n"
            "**Learning objectives**\n1. Read a figure.\n2. Check that the page\n   loads."
        ),
        nbformat.v4.new_code_cell("plot()"),
    ]
    outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png()})]
    if error:
        outputs.append(nbformat.v4.new_output("error", ename="E", evalue="x", traceback=[]))
    nb.cells[1].outputs = outputs
    folder.mkdir(exist_ok=True)
    (folder / "07_test.ipynb").write_text(json.dumps(nb))
    return folder


def test_pages_and_index(tmp_path):
    pages = site.build_site(_executed(tmp_path / "ex"), tmp_path / "site", {"07": {"wall_s": 42}})
    (p,) = pages
    assert p.title == "07 · A test notebook" and p.time.startswith("about 1 minute")
    assert p.objectives == ["Read a figure.", "Check that the page loads."]
    assert (p.n_figures, p.n_errors) == (1, 0)
    index = (tmp_path / "site" / "index.html").read_text()
    assert 'href="07_test.html"' in index and "wall time this run: 42 s" in index
    page = (tmp_path / "site" / "07_test.html").read_text()
    assert "data:image/png;base64" in page and site.FIGURE_CHECK in page


def test_error_outputs_are_counted_and_an_empty_folder_is_an_error(tmp_path):
    (p,) = site.build_site(_executed(tmp_path / "ex", error=True), tmp_path / "site")
    assert p.n_errors == 1
    with pytest.raises(FileNotFoundError, match="run the course first"):
        site.build_site(tmp_path / "empty", tmp_path / "site2")
