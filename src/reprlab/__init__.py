"""reprlab: learn image representations (supervised, VAE, SimCLR) and compare them with probes."""

from importlib.metadata import PackageNotFoundError, version

from reprlab.precision import register_resolver

try:
    __version__ = version("reprlab")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# ${native_precision:...} in the configs (bf16 autocast where the hardware runs it natively).
register_resolver()

__all__ = ["__version__"]
