"""reprlab: learn image representations (supervised, VAE, SimCLR) and compare them with probes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reprlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
