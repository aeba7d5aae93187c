"""The single source of minigate's version (read by setuptools and `minigate version`)."""

__version__ = "0.1.0"
