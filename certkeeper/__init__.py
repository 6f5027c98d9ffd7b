"""certkeeper: keeps the TLS certificates of mail servers valid, installed, served and watched."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("certkeeper")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
