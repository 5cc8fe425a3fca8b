"""synful: synaptic partner detection and neurotransmitter classification in EM volumes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synful")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .errors import SynfulError  # noqa: E402

__all__ = ["SynfulError", "__version__"]
