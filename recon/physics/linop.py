"""One small base for the project's linear operators: ``forward``, ``adjoint`` and ``normal = adjoint∘forward``.

Every operator (:class:`~qmapinr.recon.physics.forward.LineSubspaceOp`, the SENSE subspace operator, the JSENSE
low-resolution coil-map operator, the QSM dipole convolution ...) implements ``forward`` and ``adjoint`` on torch
tensors; ``normal`` defaults to their composition and may be overridden by a faster equivalent (e.g. a Toeplitz /
PSF form). The tests check every subclass with one shared adjointness helper (``tests/helpers/adjoint.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class LinearOperator(ABC):
    """A linear map ``A`` with its adjoint ``A^H`` (inner product ``<a, b> = sum conj(a) b``)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y``."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)
