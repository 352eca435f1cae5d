"""The report figure of a run, and the image formats it can be written in."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..domain import ConfigError
from ..domain._core import Out

#: Formats of ``--plot``, named by the file's suffix: those matplotlib writes with its own
#: backends and Pillow's standard codecs (no LaTeX, no headerless raw buffers).
PLOT_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "gif")


def plot_format(path: Path) -> str:
    """The image format ``path``'s suffix names; a ConfigError naming ``--plot`` when there is none."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        named = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        raise ConfigError(f"--plot {path}: {named}; the suffix names the image format, one of "
                          + ", ".join(f".{f}" for f in PLOT_FORMATS))
    return suffix


def draw_report(target: BinaryIO, image_format: str, stamps: np.ndarray, values: np.ndarray,
                outputs: np.ndarray, names: tuple[str, ...]) -> None:
    """Write the report to ``target`` in ``image_format`` (one of ``PLOT_FORMATS``): three panels,
    the series with the one-step forecast and interval, the weights, the alarms.

    ``stamps`` int64[T] (UTC ns), ``values`` float64[T], ``outputs`` float64[T, Out.length]
    (the core's output vectors, layout ``Out``), ``names`` the kernel names of the weights.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = stamps.astype("datetime64[ns]")
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                                 gridspec_kw={"height_ratios": [3, 1.4, 1]})
    shown = outputs[:-1, Out.CALIBRATING] == 0
    top.plot(times, values, color="black", lw=0.8, label="observed")
    top.plot(times[1:][shown], outputs[:-1, Out.PREDICTION][shown], color="tab:blue", lw=0.8,
             label="one-step forecast")
    top.fill_between(times[1:], outputs[:-1, Out.LOWER], outputs[:-1, Out.UPPER], where=shown,
                     color="tab:blue", alpha=0.25, label="prediction interval")
    top.legend(loc="upper left")
    top.set_title("USP one-step-ahead forecast")
    weights = outputs[:, Out.SIZE:Out.SIZE + len(names)]
    middle.stackplot(times, weights.T, labels=[f"kernel {n}" for n in names], alpha=0.8)
    middle.set_ylim(0, 1)
    middle.set_ylabel("weights")
    middle.legend(loc="upper left", fontsize="small")
    bottom.fill_between(times, 0, outputs[:, Out.EMERGENCY], step="post", color="tab:red", alpha=0.3,
                        linewidth=0, label="emergency")
    bottom.fill_between(times, 0, outputs[:, Out.DEGRADED], step="post", color="tab:orange", alpha=0.3,
                        linewidth=0, label="degraded")
    bottom.set_ylim(0, 1)
    for when in times[outputs[:, Out.REGIME_CHANGE] > 0]:
        bottom.axvline(when, color="tab:purple", lw=0.8)
    bottom.plot([], [], color="tab:purple", label="regime change")
    bottom.set_yticks([])
    bottom.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(target, format=image_format, dpi=110)
    finally:
        plt.close(figure)


__all__ = ["PLOT_FORMATS", "draw_report", "plot_format"]
