"""Exact theory, one module per setting. Pure functions of numpy arrays (float64 or object arrays of Fractions)."""
