"""Figures of the pose inference (PNG, matplotlib Agg; no display needed): a particle's posterior over view
directions on a Mollweide map with its heads' candidates, the run's pose, the truth and its path; and which
head wins where."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.atomic import atomic_path

__all__ = ["lonlat", "posterior_figure", "specialization_figure"]


def lonlat(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude (azimuth φ) and latitude (90° − tilt) in radians of unit vectors `(..., 3)`."""
    d = np.asarray(directions, dtype=np.float64)
    return np.arctan2(d[..., 1], d[..., 0]), np.arcsin(np.clip(d[..., 2], -1, 1))


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return Path(path)


def posterior_figure(post, path: str | Path, floor: float | None = None) -> Path:
    """Mollweide map of ``post.log_posterior``; values more than ``floor`` nats below the mode share one
    colour (default: the median depth, so that half the sphere shows the landscape)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5), dpi=110)
    ax = fig.add_subplot(projection="mollweide")
    lon, lat = lonlat(post.directions)
    depth = post.log_posterior.max() - post.log_posterior
    floor = float(max(10.0, np.median(depth))) if floor is None else floor
    lp = np.maximum(post.log_posterior, post.log_posterior.max() - floor)
    sc = ax.scatter(lon, lat, c=lp, s=18, cmap="magma", marker="h", linewidths=0)
    fig.colorbar(sc, ax=ax, shrink=0.6, label="log posterior (nats)")
    if len(post.path):
        plon, plat = lonlat(post.path)
        ax.plot(plon, plat, "-", color="#4fc3f7", lw=0.8, alpha=0.8)
        ax.scatter(plon, plat, s=8, color="#4fc3f7", label="path (one point per epoch)")
    clon, clat = lonlat(post.candidates)
    ax.scatter(clon, clat, s=30, facecolors="none", edgecolors="#c0c0c0", linewidths=0.8, label="heads' candidates")
    for m, (x, y) in enumerate(zip(clon, clat, strict=True)):
        ax.annotate(str(m + 1), (x, y), fontsize=5, color="#d0d0d0", xytext=(2, 2), textcoords="offset points")
    wlon, wlat = lonlat(post.candidates[post.winner])
    ax.scatter([wlon], [wlat], s=90, facecolors="none", edgecolors="#ff5a36", linewidths=1.6,
               label=f"winning head ({post.winner + 1})")
    x, y = lonlat(post.current)
    ax.scatter([x], [y], s=70, marker="x", color="#00e676", linewidths=2, label="run's pose")
    if post.truth is not None:
        x, y = lonlat(post.truth)
        ax.scatter([x], [y], s=110, marker="*", color="#ffd600", edgecolors="k", linewidths=0.5, label="truth")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"particle {post.index}: view-direction posterior (HEALPix nside {post.nside}, in-plane "
                 "marginalised)", fontsize=10)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.32), ncol=3, fontsize=7, frameon=False)
    fig.subplots_adjust(bottom=0.22)
    return _save(fig, Path(path))


def specialization_figure(spec, path: str | Path) -> Path:
    """Per HEALPix cell, the head that wins most (colour) and how many particles (size); per head, its share of
    the particles and, on simulated data, its mean pose error."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.5), dpi=110)
    ax = fig.add_subplot(2, 1, 1, projection="mollweide")
    total = spec.wins.sum(1)
    used = total > 0
    lon, lat = lonlat(spec.directions[used])
    top = np.argmax(spec.wins[used], 1)
    sc = ax.scatter(lon, lat, c=top + 1, s=12 + 60 * total[used] / max(total.max(), 1), cmap="tab20",
                    vmin=0.5, vmax=max(20.5, spec.wins.shape[1] + 0.5))
    fig.colorbar(sc, ax=ax, shrink=0.7, label="head winning most particles in the cell")
    ax.grid(True, alpha=0.3)
    ax.set_title("head specialisation over view directions (size: particles per cell)", fontsize=10)
    bx = fig.add_subplot(2, 1, 2)
    heads = np.arange(1, spec.wins.shape[1] + 1)
    bx.bar(heads, spec.head_count, color="#607d8b")
    bx.set_xlabel("head")
    bx.set_ylabel("particles won")
    if spec.head_error_deg is not None:
        ex = bx.twinx()
        ex.plot(heads, spec.head_error_deg, "o", color="#ff5a36", ms=4)
        ex.set_ylabel("mean pose error of its particles (°)", color="#ff5a36")
    fig.subplots_adjust(hspace=0.35)
    return _save(fig, Path(path))
