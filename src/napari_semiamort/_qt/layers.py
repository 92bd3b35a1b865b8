"""What the dock shows in the viewer, on the Qt main thread: the volume, the watched particles' candidates with
the winners framed, and a particle's pose posterior on a sphere. Arrays in, layers out: no engine here."""

from __future__ import annotations

import numpy as np

__all__ = ["CANDIDATES", "SPHERE", "SPHERE_POINTS", "VOLUME", "WINNERS", "ResultLayers"]

VOLUME, CANDIDATES, WINNERS = "semiamort volume", "semiamort candidates", "semiamort winners"
SPHERE, SPHERE_POINTS = "semiamort posterior", "semiamort posterior poses"


class ResultLayers:
    """The viewer's layers of a run: made on first use, then updated in place."""

    def __init__(self, viewer):
        from .view import SceneKeeper

        self.viewer = viewer
        self.scene = SceneKeeper(viewer, focus=[VOLUME, SPHERE, SPHERE_POINTS])
        self.volume: np.ndarray | None = None  # the map shown last
        self.volume_px: float | None = None  # its voxel size (Å)
        self._auto_contrast: tuple | None = None
        self._sphere = None

    def clear(self) -> None:
        self.volume = None

    def show_volume(self, volume: np.ndarray, pixel_size: float, epoch_end: bool) -> None:
        """Show ``volume`` in the volume layer, scaled in Å: the decoder's map at the run's pixel size while
        training, the final map.mrc at its own (the images' box, when the run downsampled them)."""
        self.volume, self.volume_px = volume, pixel_size
        px = pixel_size
        lo, hi = float(volume.min()), float(volume.max())
        limits = (lo, hi if hi > lo else lo + 1e-6)
        layers = self.viewer.layers
        if VOLUME not in layers:
            layer = self.viewer.add_image(volume, name=VOLUME, scale=(px,) * 3, rendering="mip",
                                          colormap="gray", contrast_limits=limits)
            self._auto_contrast = tuple(layer.contrast_limits)
            self.scene.hide_stacks()  # before the view turns 3D: no frame renders a particle stack as a volume
            self.viewer.dims.ndisplay = 3
            self.scene.frame()
            return
        layer = layers[VOLUME]
        user_set = self._auto_contrast is not None and tuple(layer.contrast_limits) != self._auto_contrast
        layer.data = volume
        if tuple(layer.scale) != (px,) * 3:
            layer.scale = (px,) * 3
        if epoch_end and not user_set:  # follow the map's range unless the user has set the limits
            layer.contrast_limits = limits
            self._auto_contrast = tuple(layer.contrast_limits)

    def show_candidates(self, watched, box: int, pixel_size: float) -> None:
        """One row per watched particle: its image, then its candidates' projections; the winners framed."""
        from ..plugin.layers import candidate_montage

        montage, frame, labels = candidate_montage(watched)
        # beside the volume, at most twice its width: the strip must not set the scene's extent
        px = pixel_size * min(1.0, 2 * box / montage.shape[1])
        offset = (0.0, (box + 8) * pixel_size)
        layers = self.viewer.layers
        if CANDIDATES not in layers:
            self.viewer.add_image(montage, name=CANDIDATES, scale=(px, px), translate=offset, colormap="gray",
                                  contrast_limits=(-3, 3))
        else:
            layers[CANDIDATES].data = montage
            if tuple(layers[CANDIDATES].scale) != (px, px):  # a new scale re-lays the scene: only when it changes
                layers[CANDIDATES].scale = (px, px)
        if WINNERS not in layers:  # an image, not shapes: it also shows while the view is 3D
            self.viewer.add_image(frame, name=WINNERS, scale=(px, px), translate=offset, colormap="red",
                                  blending="additive", contrast_limits=(0, 1))
        else:
            layers[WINNERS].data = frame
            if tuple(layers[WINNERS].scale) != (px, px):
                layers[WINNERS].scale = (px, px)
        layers[CANDIDATES].metadata["rows"] = labels

    def show_posterior(self, post, box: int, pixel_size: float) -> None:
        """A sphere coloured by the log posterior, left of the volume, with stage 1's candidates (labelled,
        the winner red), the run's pose (green), the truth (yellow) and the path (blue) as points."""
        from ..plugin.layers import posterior_sphere, sphere_mesh, to_world

        if self._sphere is None:
            self._sphere = sphere_mesh()
        verts, faces = self._sphere
        extent = box * pixel_size
        radius = 0.45 * extent
        centre = np.array([extent / 2, extent / 2, -0.7 * extent])  # (z, y, x): left of the volume
        values = posterior_sphere(post, verts)
        surface = (to_world(verts, centre, radius), faces, values)
        layers = self.viewer.layers
        first = SPHERE not in layers
        if first:
            self.viewer.add_surface(surface, name=SPHERE, colormap="magma")
        else:
            layers[SPHERE].data = surface
        layers[SPHERE].contrast_limits = (float(values.min()), float(values.max()) + 1e-9)
        layers[SPHERE].metadata["particle"] = post.index
        coords, labels, colors = _posterior_points(post)
        coords = to_world(coords, centre, radius * 1.04)
        features = {"label": labels}
        if SPHERE_POINTS not in layers:
            self.viewer.add_points(coords, name=SPHERE_POINTS, features=features, face_color=colors,
                                   size=0.06 * radius, text={"string": "{label}", "size": 6, "color": "white"},
                                   ndim=3)
        else:
            layer = layers[SPHERE_POINTS]
            layer.data = coords
            layer.features = features
            layer.face_color = colors
        if first:  # a sphere is seen in 3D, framed with the map
            self.scene.hide_stacks()
            self.viewer.dims.ndisplay = 3
            self.scene.frame()


def _posterior_points(post) -> tuple[np.ndarray, list[str], list[str]]:
    """The directions of a posterior's points, their labels and colours: candidates, pose, truth, path."""
    m = len(post.candidates)
    dirs = [post.candidates, post.current[None]]
    labels = [str(h + 1) for h in range(m)] + ["pose"]
    colors = ["#ff5a36" if h == post.winner else "#e0e0e0" for h in range(m)] + ["#00e676"]
    if post.truth is not None:
        dirs.append(post.truth[None])
        labels.append("truth")
        colors.append("#ffd600")
    if len(post.path):
        dirs.append(post.path)
        labels += [""] * len(post.path)
        colors += ["#4fc3f7"] * len(post.path)
    return np.concatenate(dirs), labels, colors
