"""The dock's run state, unmistakable: a coloured state word (running, paused, stopping, finished, stopped,
failed, opened), a progress bar that never steps back, and the run's line (epoch, stage, speed, time left).

Snapshots queued before a pause still arrive after it: while paused or stopping, they change neither the
progress nor the line, so what the user sees is the state they asked for. When an adaptive restart adds epochs
the run's own fraction steps back; the bar holds its value until the run passes it again."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QWidget

from .runner import status_line

__all__ = ["STATES", "RunStatus"]

STATES = {  # state → its colour in the dock
    "idle": "#9e9e9e", "reading": "#4fc3f7", "running": "#4fc3f7", "paused": "#ffb300", "stopping": "#ffb300",
    "finished": "#66bb6a", "stopped": "#ffb300", "failed": "#ef5350", "opened": "#66bb6a",
}


class RunStatus:
    """The state word, the progress bar and the line, as widgets: ``row`` (state and bar) and ``line``."""

    def __init__(self) -> None:
        self.state_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.row = QWidget()
        layout = QHBoxLayout(self.row)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.state_label)
        layout.addWidget(self.progress, 1)
        self.line = QLabel("")
        self.line.setWordWrap(True)
        self.state = ""
        self.set_state("idle")

    def set_state(self, state: str, line: str | None = None) -> None:
        """Show ``state`` (a key of :data:`STATES`) and, where given, a new line."""
        self.state = state
        self.state_label.setText(state)
        self.state_label.setStyleSheet(f"font-weight: bold; color: {STATES[state]}")
        self.state_label.setToolTip(f"the run is {state}")
        if line is not None:
            self.line.setText(line)

    def begin(self, line: str) -> None:
        """A new run (or a resumed one) starts: the bar from zero."""
        self.progress.setValue(0)
        self.set_state("reading", line)

    def show_snapshot(self, snap, elapsed: float) -> None:
        """A step's progress and line; ignored while paused or stopping, the bar never stepping back."""
        if self.state in ("paused", "stopping"):
            return
        if self.state == "reading":
            self.set_state("running")
        value = max(self.progress.value(), int(1000 * snap.progress))
        self.progress.setValue(value)
        self.line.setText(status_line(snap, elapsed, value / 1000))

    def end(self, state: str, line: str) -> None:
        """The run ended: finished (the bar full), stopped or failed."""
        if state == "finished":
            self.progress.setValue(1000)
        self.set_state(state, line)

    def text(self) -> str:
        """The state and the line, as one string (for tests and logs)."""
        return f"{self.state} · {self.line.text()}"
