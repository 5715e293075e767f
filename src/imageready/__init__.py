"""imageready: a pytest safety harness that prepares an Azure VM to become an image."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imageready")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"
