"""The package version (one place; the artifact records it, hatch reads it)."""

__version__ = "0.1.0"
