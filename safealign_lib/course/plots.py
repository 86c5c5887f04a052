"""Plot helpers the notebooks share (matplotlib is imported by the caller's figure)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def annotated_heatmap(
    ax: object,
    table: pd.DataFrame,
    *,
    cmap: str = "viridis",
    fmt: str = "{:.2f}",
    vmin: float | None = None,
    vmax: float | None = None,
    fontsize: int = 8,
) -> object:
    """Draw ``table`` as a heatmap on ``ax`` with each value written in its cell, in black or
    white whichever contrasts with the cell's colour; returns the image (for a colorbar)."""
    values = table.to_numpy(dtype=float)
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        rgb = np.array(im.cmap(im.norm(v))[:3])
        light = rgb @ np.array([0.299, 0.587, 0.114]) > 0.5  # perceived luminance
        ax.text(
            j,
            i,
            fmt.format(v),
            ha="center",
            va="center",
            fontsize=fontsize,
            color="k" if light else "w",
        )
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    return im
