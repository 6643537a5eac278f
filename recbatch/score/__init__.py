"""Exact top-K scoring: the in-process kernel, the Ray Data stage and the output writer."""
