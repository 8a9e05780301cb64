"""Labelled comparison figures (matplotlib, no global pyplot state) and PNG writing.

:func:`comparison_figure` draws one row per slice: ground truth, then for each
reconstruction the image and its absolute error map.  Images are shown on
[0, 1]; every error map uses the same fixed scale ``[0, error_max]`` with one
colour bar, so columns are comparable.  Column titles name the methods; each
row is labelled (e.g. subject and slice); each reconstruction carries its PSNR
and SSIM in a corner when given.  Used for ``examples.png`` and the
TensorBoard image grid alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ERROR_MAX = 0.2  # error maps show |x̂ − x| on [0, 0.2] of the [0, 1] intensity range


@dataclass
class FigureRow:
    """One slice: ``target [H, W]`` in [0, 1], ``recons {name: [H, W]}``, optional ``scores {name: (psnr, ssim)}``."""

    label: str
    target: np.ndarray
    recons: dict[str, np.ndarray]
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)


def comparison_figure(rows: list[FigureRow], title: str = "", error_max: float = ERROR_MAX,
                      tile_inches: float = 1.9) -> np.ndarray:
    """The figure as an RGB ``uint8 [height, width, 3]`` array (see module doc)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(rows[0].recons)
    columns = ["ground truth"] + [c for n in names for c in (n, f"{n} |error|")]
    n_rows, n_cols = len(rows), len(columns)
    top_inches = 0.3 + (0.3 if title else 0.0)  # column titles (+ figure title)
    width, height = tile_inches * (n_cols + 0.1) + 1.4, tile_inches * n_rows + top_inches + 0.1
    fig = Figure(figsize=(width, height), dpi=100)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[1] * n_cols + [0.08], wspace=0.04, hspace=0.06,
                            left=0.45 / width, right=1 - 0.8 / width, top=1 - top_inches / height,
                            bottom=0.1 / height)
    error_image = None
    for r, row in enumerate(rows):
        tiles = [("image", row.target, None)]
        for name in names:
            tiles += [("image", row.recons[name], row.scores.get(name)),
                      ("error", np.abs(row.recons[name] - row.target), None)]
        for c, (kind, image, score) in enumerate(tiles):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if kind == "image":
                ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                error_image = ax.imshow(image, cmap="inferno", vmin=0, vmax=error_max, interpolation="nearest")
            if score is not None:
                ax.text(0.02, 0.02, f"{score[0]:.2f} dB\nSSIM {score[1]:.3f}", transform=ax.transAxes,
                        color="yellow", fontsize=7, va="bottom", ha="left")
            if r == 0:
                ax.set_title(columns[c], fontsize=9)
            if c == 0:
                ax.set_ylabel("\n".join(_shorten(line) for line in row.label.splitlines()), fontsize=8)
    if error_image is not None:
        bar = fig.colorbar(error_image, cax=fig.add_subplot(grid[:, n_cols]))
        bar.set_label(f"|error| on a fixed scale 0–{error_max:g}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def change_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], title: str = "",
                  tile_inches: float = 1.9) -> np.ndarray:
    """What a refinement changed: per row ``(label, reconstruction [H, W], change [H, W])`` the image and the
    signed change on one symmetric scale (blue negative, red positive, one colour bar); RGB ``uint8``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = max(float(np.max(np.abs(change))) for _, _, change in rows) or 1.0
    width, height = tile_inches * 2.1 + 1.4, tile_inches * len(rows) + 0.7
    fig = Figure(figsize=(width, height), dpi=100)
    canvas = FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), 3, width_ratios=[1, 1, 0.08], wspace=0.04, hspace=0.06,
                            left=0.45 / width, right=1 - 0.8 / width, top=1 - 0.6 / height, bottom=0.1 / height)
    shown = None
    for r, (label, image, change) in enumerate(rows):
        for c, (tile, kwargs) in enumerate(((image, dict(cmap="gray", vmin=0, vmax=1)),
                                            (change, dict(cmap="RdBu_r", vmin=-scale, vmax=scale)))):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            drawn = ax.imshow(np.clip(tile, 0, 1) if c == 0 else tile, interpolation="nearest", **kwargs)
            shown = drawn if c == 1 else shown
            if r == 0:
                ax.set_title(("refined reconstruction", "change λ·V (image units)")[c], fontsize=9)
            if c == 0:
                ax.set_ylabel("\n".join(_shorten(line) for line in label.splitlines()), fontsize=8)
    bar = fig.colorbar(shown, cax=fig.add_subplot(grid[:, 2]))
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def line_plot(series: dict[str, tuple], xlabel: str, ylabel: str, xticklabels: list[str] | None = None,
              width: float = 6.0, height: float = 3.6) -> np.ndarray:
    """RGB ``uint8`` image of one line per ``series`` entry (name -> ``(x, y)``), with a legend;
    ``xticklabels`` labels the x positions 0, 1, … (e.g. subjects)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-", label=name, markersize=4)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)))
        ax.set_xticklabels(xticklabels, rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _shorten(text: str, limit: int = 24) -> str:
    """``text`` cut to its last ``limit`` characters (subject ids end in what tells them apart)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a ``uint8`` image ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) as PNG."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image)).save(str(path), format="PNG")
