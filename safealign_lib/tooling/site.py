"""A static site of the executed notebooks: ``build/site/index.html`` and one page per notebook.

The index is the course map: each notebook's title, learning objectives, stated runtime, this
run's wall time and headline metrics (:data:`~safealign_lib.course.contract.HEADLINES`), and how
many figures and error outputs its page holds. Pages are nbconvert's HTML with the figures
embedded, so the folder can be opened or served as it is. Each page carries a small script that
records, once the page has loaded, how many of its embedded figures rendered (``data-figures`` on
the body), which the browser test reads.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safealign_lib.course.contract import HEADLINES

# sets <body data-figures="rendered/total"> after load, counting the embedded figures (the badges
# are remote images, which an offline browser cannot fetch); the browser test reads it
FIGURE_CHECK = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images]"
    ".filter(i => i.src.startsWith('data:')); "
    "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length; "
    "document.body.dataset.figures = ok + '/' + imgs.length; });</script>"
)


@dataclass
class Page:
    """One executed notebook as the index lists it."""

    number: str
    title: str
    time: str
    objectives: list[str]
    n_figures: int
    n_errors: int
    html_name: str


def _markdown(cells: list[dict]) -> str:
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def describe(path: Path) -> Page:
    """Title, **Time:** line, learning objectives and figure / error-output counts of an executed
    notebook."""
    cells = json.loads(path.read_text())["cells"]
    text = _markdown(cells[:3])
    title = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), path.stem)
    time = next((ln for ln in text.splitlines() if ln.startswith("**Time:**")), "")
    objectives: list[str] = []
    if "**Learning objectives**" in text:
        block = text.split("**Learning objectives**", 1)[1].strip().split("\n\n")[0]
        for ln in block.splitlines():
            if re.match(r"^\d+\.", ln.strip()):
                objectives.append(re.sub(r"^\d+\.\s*", "", ln.strip()))
            elif objectives:
                objectives[-1] += " " + ln.strip()
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    return Page(
        number=path.name[:2],
        title=title,
        time=time.removeprefix("**Time:**").strip(),
        objectives=objectives,
        n_figures=sum("image/png" in o.get("data", {}) for o in outputs),
        n_errors=sum(o.get("output_type") == "error" for o in outputs),
        html_name=path.with_suffix(".html").name,
    )


def _render(path: Path) -> str:
    from nbconvert import HTMLExporter  # only the site needs nbconvert's templates

    body, _ = HTMLExporter(template_name="lab").from_filename(str(path))
    return body.replace("</body>", FIGURE_CHECK + "</body>", 1)


def _headlines(number: str, metrics: Mapping[str, Mapping[str, float]]) -> str:
    m = metrics.get(number, {})
    parts = [f"{k} = {m[k]:.3g}" for k in HEADLINES.get(number, ()) if k in m]
    if "wall_s" in m:
        parts.insert(0, f"wall time this run: {m['wall_s']:.0f} s")
    return "; ".join(parts)


def index_html(pages: list[Page], metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The course map: one section per notebook, linking its page."""
    items = []
    for p in pages:
        objectives = "".join(f"<li>{html.escape(o)}</li>" for o in p.objectives)
        items.append(
            f'<section><h2><a href="{p.html_name}">{html.escape(p.title)}</a></h2>'
            f"<p><b>Time:</b> {html.escape(p.time)}</p>"
            f"<p>{html.escape(_headlines(p.number, metrics))}</p>"
            f"<p>{p.n_figures} figures, {p.n_errors} error outputs</p>"
            f"<ol>{objectives}</ol></section>"
        )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>SafeAlign course</title>'
        "</head><body><h1>SafeAlign: how LoRA fine-tuning breaks safety alignment, and whether "
        "it can be kept</h1><p>The executed notebooks of one run of the course.</p>"
        + "".join(items)
        + FIGURE_CHECK
        + "</body></html>"
    )


def build_site(
    executed: str | Path, out: str | Path, metrics: Mapping[str, Mapping[str, float]] | None = None
) -> list[Page]:
    """Render every executed ``NN_*.ipynb`` of ``executed`` into ``out`` (one HTML page each)
    and write ``out/index.html``; ``metrics`` (the run's metrics.json) adds wall times and
    headlines. Returns the pages in course order."""
    executed, out = Path(executed), Path(out)
    notebooks = sorted(executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(
            f"No executed notebooks in {executed}; run the course first (`safealign course` or "
            "`make course`), or pass the folder that holds them."
        )
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    for nb in notebooks:
        page = describe(nb)
        (out / page.html_name).write_text(_render(nb), encoding="utf-8")
        pages.append(page)
    (out / "index.html").write_text(index_html(pages, metrics or {}), encoding="utf-8")
    return pages
