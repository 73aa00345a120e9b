"""The installed package's version, in a module of its own so that any module can import
it without importing the whole package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wspush")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
