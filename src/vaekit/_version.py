"""The package version, read by pyproject.toml at build time and written into every run."""

__version__ = "0.3.0"
