"""Scoring against truth (``metrics``) and the benchmark harness (``benchmark``)."""
