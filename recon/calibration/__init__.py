"""Estimators every method shares: coil maps and compression (``coilmaps``), JSENSE refinement (``jsense``), the
noise level (``noise``) and the low-resolution support / subspace images (``support``)."""
