"""The version, written once: the package, pyproject.toml (read from here at build time) and the PNG provenance."""

__version__ = "0.1.0"
