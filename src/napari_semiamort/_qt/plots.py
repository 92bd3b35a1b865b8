"""Training curves in a dock: loss and pose change per epoch, and the FSC, in napari's theme colours.

The artists are made once and only their data change: a full matplotlib redraw with a layout engine took
~140 ms on the GUI thread (benchmarks/ui_latency.py), an update of the lines ~20 ms.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["PlotsWidget"]


class PlotsWidget(QWidget):
    """Three matplotlib axes (Agg canvas, no GPU needed), updated at each epoch end."""

    def __init__(self, viewer=None, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self.figure = Figure(figsize=(12, 2.6), dpi=80)
        self.figure.subplots_adjust(left=0.05, right=0.99, top=0.88, bottom=0.2, wspace=0.35)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.axes = [self.figure.add_subplot(1, 4, k) for k in (1, 2, 3)]
        self._map = self.figure.add_subplot(1, 4, 4, projection="mollweide")  # the pose posterior
        self._map.set_xticklabels([])
        self._map.grid(True, alpha=0.3)
        self._map.set_title("pose posterior (Show posterior)", fontsize=9)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.history: list[dict] = []
        self.fsc: dict[str, tuple] = {}  # label → (frequencies 1/Å, curve)
        titles = ("loss per epoch", "mean pose change per epoch (°)", "FSC")
        xlabels = ("epoch", "epoch", "spatial frequency (1/Å)")
        for ax, title, xlabel in zip(self.axes, titles, xlabels, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(labelsize=7)
        (self._loss,) = self.axes[0].plot([], [], marker="o", ms=3)
        (self._change,) = self.axes[1].plot([], [], marker="o", ms=3)
        self._thresholds = [self.axes[2].axhline(t, lw=0.6, ls="--", alpha=0.6) for t in (0.143, 0.5)]
        self.axes[2].set_ylim(-0.1, 1.05)
        self._fsc_lines: dict = {}
        self._colors = {"bg": "#262930", "fg": "#f0f1f2", "accent": "#d6d0ce"}
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)
            self._on_theme()
        else:
            self._apply_colors()
        self.canvas.draw_idle()

    def _on_theme(self, event=None) -> None:
        from napari.utils.theme import get_theme

        theme = get_theme(self.viewer.theme)
        self._colors = {"bg": theme.canvas.as_hex(), "fg": theme.text.as_hex(), "accent": theme.highlight.as_hex()}
        self._apply_colors()
        self.canvas.draw_idle()

    def _apply_colors(self) -> None:
        c = self._colors
        self.figure.set_facecolor(c["bg"])
        self._map.set_facecolor(c["bg"])
        self._map.title.set_color(c["fg"])
        self._map.tick_params(colors=c["fg"], labelsize=6)
        for ax in self.axes:
            ax.set_facecolor(c["bg"])
            ax.tick_params(colors=c["fg"])
            ax.title.set_color(c["fg"])
            ax.xaxis.label.set_color(c["fg"])
            for spine in ax.spines.values():
                spine.set_color(c["fg"])
        for line in (self._loss, self._change):
            line.set_color(c["accent"])
        for line in self._thresholds:
            line.set_color(c["fg"])

    def set_history(self, history: list[dict]) -> None:
        self.history = list(history)
        epochs = [m["epoch"] for m in self.history]
        self._loss.set_data(epochs, [m["loss"] for m in self.history])
        self._change.set_data(epochs, [m.get("pose_change_deg", np.nan) for m in self.history])
        for ax in self.axes[:2]:
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()

    def set_fsc(self, label: str, frequencies, curve) -> None:
        self.fsc[label] = (np.asarray(frequencies), np.asarray(curve))
        if label not in self._fsc_lines:
            (self._fsc_lines[label],) = self.axes[2].plot([], [], label=label)
            legend = self.axes[2].legend(fontsize=7, loc="lower left")
            legend.get_frame().set_alpha(0.3)
        self._fsc_lines[label].set_data(*self.fsc[label])
        self.axes[2].set_xlim(0, max(float(f[-1]) for f, _ in self.fsc.values()))
        self.canvas.draw_idle()

    def set_posterior(self, post) -> None:
        """The posterior's Mollweide map in a fourth panel: colours are log posterior, markers as on the sphere."""
        from ..plugin.layers import posterior_sphere
        from ..run.figures import lonlat

        if not hasattr(self, "_dots") or len(self._dots.get_offsets()) != len(post.directions):
            lon, lat = lonlat(post.directions)
            self._dots = self._map.scatter(lon, lat, c=np.zeros(len(lon)), s=4, cmap="magma", linewidths=0)
            (self._cands,) = self._map.plot([], [], "o", mfc="none", mec="#e0e0e0", ms=3, lw=0)
            (self._win,) = self._map.plot([], [], "o", mfc="none", mec="#ff5a36", ms=7, mew=1.5, lw=0)
            (self._pose,) = self._map.plot([], [], "x", color="#00e676", ms=6, mew=1.5, lw=0)
            (self._truth,) = self._map.plot([], [], "*", color="#ffd600", ms=8, lw=0)
            (self._path,) = self._map.plot([], [], "-", color="#4fc3f7", lw=0.8)
        values = posterior_sphere(post, post.directions)
        self._dots.set_array(values)
        self._dots.set_clim(values.min(), values.max() + 1e-9)
        self._cands.set_data(*lonlat(post.candidates))
        self._win.set_data(*[np.atleast_1d(v) for v in lonlat(post.candidates[post.winner])])
        self._pose.set_data(*[np.atleast_1d(v) for v in lonlat(post.current)])
        self._truth.set_data(*([np.atleast_1d(v) for v in lonlat(post.truth)] if post.truth is not None else [[], []]))
        self._path.set_data(*lonlat(post.path) if len(post.path) else ([], []))
        self._map.set_title(f"posterior of particle {post.index}", fontsize=9, color=self._colors["fg"])
        self.posterior = post
        self.canvas.draw_idle()

    def clear(self) -> None:
        self.history, self.fsc = [], {}
        self._loss.set_data([], [])
        self._change.set_data([], [])
        for line in self._fsc_lines.values():
            line.remove()
        self._fsc_lines = {}
        legend = self.axes[2].get_legend()
        if legend is not None:
            legend.remove()
        self.canvas.draw_idle()
