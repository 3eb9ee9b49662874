"""SUMMIT: hash-grid INR of the maps fitted through the signal model (``solver``), its field (``model``) and the
data-driven initial maps (``initial``)."""
