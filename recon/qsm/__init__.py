"""Quantitative susceptibility mapping from the INR's off-resonance map (see :mod:`.inversion`)."""

from qmapinr.recon.qsm.inversion import qsm_from_field

__all__ = ["qsm_from_field"]
