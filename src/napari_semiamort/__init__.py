"""napari-semiamort: ab-initio cryo-EM reconstruction with semi-amortized pose inference."""

import os
from importlib.metadata import PackageNotFoundError, version

# Idle OpenMP threads sleep at once instead of spinning (GNU libgomp, torch's CPU runtime, spins ~300,000
# times, a few ms, after every parallel region by default): on a busy machine the spinning takes the cores
# the working threads need (docs/performance.md, "A busy machine"). It must be set here, before torch loads
# the runtime, which reads it once: the CLI and the napari plugin both import this module first, and it
# imports no torch. A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; a process that imported torch before
# this package keeps the runtime's default.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("napari-semiamort")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
