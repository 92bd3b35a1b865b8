"""The viewer's scene while a run shows its map: particle stacks never drawn as volumes, the map framed.

A particle stack `(N, L, L)` is three-dimensional to napari: in the 3D view it is rendered as a volume N images
deep, 9-18 s a frame with software OpenGL for the demo's 1,000 images (0.03 s in 2D, 0.86 s for the map alone;
issue 19), and it sets the scene's extent. So while the view is 3D the stacks are hidden, and shown again, as the
user left them, when the view returns to 2D. In 3D, Home (and every reset of the view) frames the run's map and
posterior sphere rather than everything in the scene. Stacks are the layers a reader of this plugin marked (metadata
``semiamort_kind: particles``) and any other image layer whose first axis is much deeper than the map is wide.
"""

from __future__ import annotations

import time

__all__ = ["FramePacer", "SceneKeeper", "is_particle_stack"]

DEEP_STACK = 256  # an image layer with more planes than this along its first axis (and 4× its width) is a stack


def is_particle_stack(layer) -> bool:
    """Whether ``layer`` is a stack of 2D images (not a map) that must not be rendered as a volume."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get("semiamort_kind") == "particles":
        return True
    shape = getattr(getattr(layer, "data", None), "shape", ())
    if getattr(layer, "rgb", False) or len(shape) != 3:
        return False
    return shape[0] > DEEP_STACK and shape[0] > 4 * max(shape[1:])


class SceneKeeper:
    """Hides the particle stacks while the viewer is 3D (restoring them in 2D) and frames the ``focus`` layers
    (by name): on demand, and in 3D whenever the view is reset (Home)."""

    def __init__(self, viewer, focus: list[str]):
        self.viewer, self.focus = viewer, focus
        self._hidden: list = []  # the stacks this keeper hid, shown again in 2D
        self._framing = False
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.events.reset_view.connect(self._on_reset)

    def disconnect(self) -> None:
        self.viewer.dims.events.ndisplay.disconnect(self._on_ndisplay)
        self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        self.viewer.events.reset_view.disconnect(self._on_reset)

    def _on_reset(self, event=None) -> None:
        if self.viewer.dims.ndisplay == 3 and not self._framing:
            self.frame()

    def _on_ndisplay(self, event=None) -> None:
        if self.viewer.dims.ndisplay == 3:
            self.hide_stacks()
        else:
            for layer in self._hidden:
                if layer in self.viewer.layers:
                    layer.visible = True
            self._hidden = []

    def _on_inserted(self, event) -> None:
        if self.viewer.dims.ndisplay == 3 and is_particle_stack(event.value) and event.value.visible:
            event.value.visible = False
            self._hidden.append(event.value)

    def hide_stacks(self) -> None:
        """Hide every visible particle stack (before the view turns 3D, so no frame renders one as a volume)."""
        for layer in self.viewer.layers:
            if layer.visible and is_particle_stack(layer):
                layer.visible = False
                self._hidden.append(layer)

    def frame(self) -> bool:
        """Centre and zoom the camera on the focus layers present (the camera's angles kept); False: none is."""
        layers = [self.viewer.layers[n] for n in self.focus if n in self.viewer.layers]
        if not layers:
            return False
        self._framing = True
        try:
            self.viewer.fit_to_view(layers=layers, margin=0.25)
        finally:
            self._framing = False
        return True


class FramePacer:
    """How often the live layers may change, set by what the last change cost the event loop.

    Each change of the map makes napari draw a frame; with software OpenGL on a busy machine a 3D frame takes
    100s of ms, and changes queued faster than frames draw freeze the window. A 20 ms heartbeat on the Qt main
    thread records the longest gap since the last change: over ``budget`` s, the interval between changes
    doubles (up to ``most`` s); under it, it shrinks back towards ``least``. Changes not yet due are dropped,
    never queued (the next one carries the newest map)."""

    def __init__(self, parent=None, least: float = 0.5, most: float = 8.0, budget: float = 0.1):
        from qtpy.QtCore import QTimer

        self.least, self.most, self.budget = least, most, budget
        self.interval, self.worst, self.last = least, 0.0, 0.0
        self._beat = time.perf_counter()
        self.timer = QTimer(parent)  # beats only while a run is live (:meth:`live`): an idle dock wakes nothing
        self.timer.timeout.connect(self._tick)

    def live(self, on: bool) -> None:
        """Start the heartbeat when a run starts, stop it when it ends."""
        if on:
            self._beat, self.worst = time.perf_counter(), 0.0
            self.timer.start(20)
        else:
            self.timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self._beat - 0.02)
        self._beat = now

    def due(self, now: float | None = None) -> bool:
        """Whether a change may be shown now; if so, the interval adapts to the last change's cost."""
        now = time.perf_counter() if now is None else now
        if now - self.last < self.interval:
            return False
        slow = self.worst > self.budget
        self.interval = min(self.most, self.interval * 2) if slow else max(self.least, self.interval * 0.8)
        self.worst, self.last = 0.0, now
        return True
