"""TES AI: an open GPU cloud built from other people's machines."""

__version__ = "0.1.0"
