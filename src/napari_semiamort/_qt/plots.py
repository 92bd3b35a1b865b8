"""Training curves in a dock: loss and pose change per epoch, and the FSC, in napari's theme colours."""

from __future__ import annotations

from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["PlotsWidget"]


class PlotsWidget(QWidget):
    """Three matplotlib axes (Agg canvas, works without a GPU) redrawn at each epoch end."""

    def __init__(self, viewer=None, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.viewer = viewer
        self.figure = Figure(figsize=(4, 6), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.axes = self.figure.subplots(3, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.history: list[dict] = []
        self.fsc: dict[str, tuple] = {}  # label → (frequencies 1/Å, curve)
        self._colors = {"bg": "#262930", "fg": "#f0f1f2", "accent": "#d6d0ce"}
        if viewer is not None:
            viewer.events.theme.connect(self._on_theme)
            self._on_theme()
        self.redraw()

    def _on_theme(self, event=None) -> None:
        from napari.utils.theme import get_theme

        theme = get_theme(self.viewer.theme)
        self._colors = {"bg": theme.canvas.as_hex(), "fg": theme.text.as_hex(), "accent": theme.highlight.as_hex()}
        self.redraw()

    def set_history(self, history: list[dict]) -> None:
        self.history = list(history)
        self.redraw()

    def set_fsc(self, label: str, frequencies, curve) -> None:
        self.fsc[label] = (frequencies, curve)
        self.redraw()

    def clear(self) -> None:
        self.history, self.fsc = [], {}
        self.redraw()

    def redraw(self) -> None:
        c = self._colors
        self.figure.set_facecolor(c["bg"])
        epochs = [m["epoch"] for m in self.history]
        series = [
            ("loss", [m["loss"] for m in self.history], "loss per epoch"),
            ("pose change (°)", [m.get("pose_change_deg", float("nan")) for m in self.history],
             "mean pose change per epoch"),
        ]
        for ax, (ylabel, values, title) in zip(self.axes[:2], series, strict=True):
            ax.clear()
            ax.plot(epochs, values, marker="o", ms=3, color=c["accent"])
            ax.set_title(title, color=c["fg"], fontsize=9)
            ax.set_xlabel("epoch", color=c["fg"], fontsize=8)
            ax.set_ylabel(ylabel, color=c["fg"], fontsize=8)
        ax = self.axes[2]
        ax.clear()
        for label, (f, curve) in self.fsc.items():
            ax.plot(f, curve, label=label)
        for thr in (0.143, 0.5):
            ax.axhline(thr, color=c["fg"], lw=0.6, ls="--", alpha=0.6)
        ax.set_ylim(-0.1, 1.05)
        ax.set_title("FSC", color=c["fg"], fontsize=9)
        ax.set_xlabel("spatial frequency (1/Å)", color=c["fg"], fontsize=8)
        if self.fsc:
            ax.legend(fontsize=7)
        for ax in self.axes:
            ax.set_facecolor(c["bg"])
            ax.tick_params(colors=c["fg"], labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(c["fg"])
        self.canvas.draw_idle()
