"""HIEROS: hierarchical imagination on structured state space sequence world models."""

__version__ = "0.1.0"
