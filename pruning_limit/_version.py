"""The installed package's version, in a leaf module that every other module may import."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pruning-limit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
