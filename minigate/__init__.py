"""minigate: an OpenAI-compatible gateway that turns recurring agent calls into cheap miniature calls."""

from minigate.version import __version__

__all__ = ["__version__"]
