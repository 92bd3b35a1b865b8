"""napari-semiamort: ab-initio cryo-EM reconstruction with semi-amortized pose inference."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-semiamort")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
