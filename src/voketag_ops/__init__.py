"""voketag-ops: the operations tool of the VokeTag platform (CLI: ``voke``)."""

__version__ = "0.1.0"
