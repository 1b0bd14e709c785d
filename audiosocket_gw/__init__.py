"""audiosocket-gw: bridge Asterisk AudioSocket calls to AI voice backends."""

__version__ = "0.1.0"
