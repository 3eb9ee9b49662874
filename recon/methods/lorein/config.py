"""LoREIN settings: every SUMMIT field (the PMR block is SUMMIT's field, fitted by SUMMIT's loop) plus the LRR block.

:class:`LoreinConfig` subclasses :class:`~qmapinr.recon.config.SummitConfig`, so the shared ``prepare`` /
``build_field`` / ``fit`` / ``final_maps`` take it unchanged and a SUMMIT property set is a valid LoREIN one
(switching a site from ``summit`` to ``lorein`` needs one property, not a new XML).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qmapinr.recon.config import HashGridConfig, SummitConfig


@dataclass(frozen=True)
class LoreinConfig(SummitConfig):
    """SUMMIT settings + the LRR block and the joint loss weights (all weights relative, dimensionless).

    ``lrr_rank`` : K temporal bases (SVD of the signal-model dictionary over (tau, n)); one shared set for all
    echoes. ``lrr_mode`` : "inr" (hash grid + MLP with 2 K nte outputs, a residual around the initial PMR
    coefficients) or "tensor" (explicit complex coefficient images, one value per voxel, echo and basis).
    ``lambda_lrr_dc`` / ``lambda_pmr_dc`` : weights of the L1 data consistency of the LRR series and of the PMR
    signal. ``lambda_cons`` : weight of the consistency ``|U_lrr - P_V S_pmr|^2`` (mean over the support, in noise
    units, times the initial data-consistency loss). ``cons_grad`` : which block the consistency term updates:
    "both", "pmr" (LRR detached: the weighted images guide the maps) or "lrr". ``lrr_output`` : also return the LRR
    weighted-image series (magnitude, ``lrr_output_readouts`` readouts per tau) as an MRD image series per echo.
    """

    lrr_rank: int = 8
    lrr_mode: str = "inr"
    lrr_grid: HashGridConfig = field(default_factory=HashGridConfig)
    lrr_hidden: int = 64
    lrr_layers: int = 2
    lrr_lr_scale: float = 1.0
    lambda_lrr_dc: float = 1.0
    lambda_pmr_dc: float = 1.0
    lambda_cons: float = 1e-4  # measured: 1 and 0.01 keep the maps at their start (docs/benchmarks/lorein.md)
    cons_grad: str = "both"
    lrr_coil_grad: bool = False  # let the LRR data term update the shared coil model too
    lrr_output: bool = False
    lrr_output_readouts: int = 3
