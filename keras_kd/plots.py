"""The run's figures: training curves, CED and ROC curves, landmarks drawn on faces.

Each is a PNG written atomically (keras_kd.io) through matplotlib's Agg figure, without pyplot, so no global
backend state is touched and a run on a machine without a display needs nothing set.
"""
from __future__ import annotations

import numpy as np

from keras_kd import io
from keras_kd import metrics as kd_metrics


def _figure(n_axes: int = 1, cols: int = 3):
    """A pyplot-free Agg figure (no global backend state), one small panel per axis."""
    from matplotlib.figure import Figure
    rows, cols = (n_axes + cols - 1) // cols, min(n_axes, cols)
    fig = Figure(figsize=(4.0 * cols, 3.0 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_axes:]:
        ax.set_axis_off()
    return fig, list(axes[:n_axes])


def _save(fig, path: str, **layout) -> None:
    fig.tight_layout(**layout)
    io.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")


def plot_history(histories: dict[str, dict[str, list[float]]], path: str) -> list[str]:
    """Training curves: one panel per metric (loss, task, soft, ...), one colour per model/stage, x = epoch;
    the val split's value of a metric (val_loss) dashed in its panel, a val-only metric (a task's
    eval_metrics, val_<name>) alone.
    Returns the panels' titles."""
    keys = list(dict.fromkeys(k for h in histories.values() for k in h))
    names = [k for k in keys if not (k.startswith("val_") and k[4:] in keys)]
    fig, axes = _figure(max(len(names), 1))
    from matplotlib.ticker import MaxNLocator
    for ax, metric in zip(axes, names):
        val = not metric.startswith("val_") and any(h.get("val_" + metric) for h in histories.values())
        for i, (run, h) in enumerate(histories.items()):
            curves = [(h.get(metric), "-"), (h.get("val_" + metric) if val else None, "--")]
            for n, (values, style) in enumerate(c for c in curves if c[0]):
                # colour by run, so a run keeps its colour across panels; one legend entry per run
                ax.plot(range(1, len(values) + 1), values, style, marker=".", color=f"C{i % 10}",
                        label=run if n == 0 else "_nolegend_")
        ax.set(title=metric + (" (dashed: val)" if val else ""), xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
    _save(fig, path)
    return [ax.get_title() for ax in axes[:len(names)]]


def plot_ced(curves: dict[str, np.ndarray], path: str, max_err: float = 0.10) -> None:
    """Cumulative error distributions of per-image normalised landmark errors, AUC in the legend."""
    fig, (ax,) = _figure()
    for name, err in curves.items():
        x, y = kd_metrics.ced(err, max_err)
        ax.plot(100 * x, y, label=f"{name} (AUC {kd_metrics.auc_ced(err, max_err):.3f})")
    ax.set(xlabel="normalised error (%)", ylabel="fraction of images", xlim=(0, 100 * max_err), ylim=(0, 1))
    ax.legend(fontsize=6)
    _save(fig, path)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str) -> None:
    """ROC curves, TAR against FAR on a log axis (FAR = 0 points cannot be drawn there and are dropped)."""
    fig, (ax,) = _figure()
    for name, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        ax.step(fpr[fpr > 0], tpr[fpr > 0], where="post", label=name)
    ax.set(xscale="log", xlabel="FAR", ylabel="TAR", ylim=(0, 1.01))
    ax.legend(fontsize=6)
    _save(fig, path)


LANDMARK_STYLES = {"true": ("lime", "o"), "teacher": ("red", "x"), "student": ("cyan", "+"),
                   "predicted": ("cyan", "+")}


def _draw(ax, image: np.ndarray, points: dict[str, np.ndarray]) -> None:
    ax.imshow(image, interpolation="nearest")
    for i, (label, p) in enumerate(points.items()):
        colour, marker = LANDMARK_STYLES.get(label.split(" ")[0].rstrip(","), (f"C{i}", "."))
        ax.scatter(p[:, 0] - 0.5, p[:, 1] - 0.5, s=28, c=colour, marker=marker, linewidths=1.2, label=label)
    ax.set_axis_off()


def draw_landmarks(image: np.ndarray, points: dict[str, np.ndarray], path: str) -> None:
    """One image with each named set of 5 landmarks [5, 2] (x, y in the image's pixels) drawn on it."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4, 4), dpi=100)
    ax = fig.subplots()
    _draw(ax, image, points)
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_alignment_examples(images: np.ndarray, points: dict[str, np.ndarray], path: str, cols: int = 4) -> None:
    """Test faces [N, S, S, 3] with named landmark sets [N, 5, 2] (pixels) drawn: the run's picture."""
    from matplotlib.figure import Figure
    n = len(images)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(2.4 * cols, 2.4 * rows + 0.4), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, ax in enumerate(axes):
        if i < n:
            _draw(ax, images[i], {k: v[i] for k, v in points.items()})
        else:
            ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
    _save(fig, path, rect=(0, 0, 1, 1 - 0.4 / (2.4 * rows + 0.4)))  # the legend's strip kept free
