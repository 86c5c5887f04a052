"""Figures of the course notebooks, one module per notebook (matplotlib)."""
