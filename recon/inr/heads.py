"""MLP heads that turn encoded coordinates into quantitative maps and coil sensitivities.

Design: :class:`ParameterHeads` maps FEATURES (the output of an encoding) to parameters; it owns no encoding,
so the caller decides whether magnitude and phase heads share one hash grid or use two (pass
``phase_features``). :class:`MapINR` is the convenience composition ``coordinates -> encoding(s) -> heads``
used by the solvers; :class:`CoilINR` owns its own (small) grid because coil maps always get a separate,
smoother representation.

Parameterisation (SUMMIT: one MLP per parameter, 3 hidden layers x 64, ReLU):

* ``A, T1, T2, T2star`` (T times in ms, A a.u.): ``value = softclamp(exp(raw + log(init)), lo, hi)``. The last
  layer starts near zero (``out_init_scale``), so at initialisation every value sits at ``init`` (or at a
  per-point ``mag_prior``). The clamp acts on ``log(value)`` with softplus of sharpness ``clamp_sharpness``
  (1/sharpness is the width of the knee in log units): identity (to ~exp(-sharpness * distance to the bound))
  inside the range, no hard clipping; the gradient decays smoothly beyond a bound (sigmoid(-sharpness * excess
  in log units)).
* ``Phase0`` (rad) and ``B0`` (Hz) from one phase MLP without output activation:
  ``Phase0 = phase0_scale * raw_0 + phase0_prior``, ``B0 = b0_scale_hz * raw_1 + b0_prior``; the echo phase is
  ``Phase0 + 2 pi B0 TE`` (physics.signal takes TE in ms). The priors are fixed per-point tensors (e.g. from
  the echo phase differences of a low-resolution image) so the network learns a residual.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from qmapinr.recon.config import HashGridConfig
from qmapinr.recon.inr.hashgrid import make_encoding

#: Magnitude-type parameters (exp output), in output order.
MAG_PARAMS = ("A", "T1", "T2", "T2star")
#: Phase-type parameters (linear output).
PHASE_PARAMS = ("Phase0", "B0")
DEFAULT_INIT = {"A": 1.0, "T1": 1000.0, "T2": 80.0, "T2star": 50.0}
#: Soft clamp ranges (T in ms); None = no clamp (A is only kept positive by the exp).
DEFAULT_RANGES: dict[str, tuple[float, float] | None] = {
    "A": None, "T1": (20.0, 8000.0), "T2": (5.0, 3000.0), "T2star": (2.0, 3000.0),
}


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run a block with a fixed CPU RNG seed without disturbing the global RNG (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class MLP(nn.Sequential):
    """``layers`` hidden layers of width ``hidden`` with ``activation``, then a linear output.

    Parameters
    ----------
    in_dim, out_dim : int
    hidden : int
    layers : int
        Number of hidden layers (0 = a single linear map).
    activation : type of nn.Module
    out_init_scale : float or None
        If given, the output layer's weights are uniform in ``[-s, s]`` and its bias zero, so the initial
        output is ~0; None keeps PyTorch's default init.

    Shapes: (N, in_dim) -> (N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 64, layers: int = 3,
                 activation: type[nn.Module] = nn.ReLU, out_init_scale: float | None = None) -> None:
        mods: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), activation()]
            width = hidden
        last = nn.Linear(width, out_dim)
        if out_init_scale is not None:
            nn.init.uniform_(last.weight, -out_init_scale, out_init_scale)
            nn.init.zeros_(last.bias)
        mods.append(last)
        super().__init__(*mods)


def soft_clamp_log(u: torch.Tensor, lo: float, hi: float, sharpness: float) -> torch.Tensor:
    """Smoothly clamp ``u`` (a log value) into ``[log lo, log hi]``; softplus knees of width 1/sharpness."""
    llo, lhi = math.log(lo), math.log(hi)
    u = llo + F.softplus(u - llo, beta=sharpness)
    return lhi - F.softplus(lhi - u, beta=sharpness)


class ParameterHeads(nn.Module):
    """Separate MLPs for A, T1, T2, T2* (exp output around ``init``) and one phase MLP (Phase0, B0).

    Parameters
    ----------
    in_dim : int
        Feature width of the magnitude heads (encoding ``n_output_dims``).
    init : mapping name -> float, optional
        Initial values of A (a.u.), T1, T2, T2star (ms); missing keys take :data:`DEFAULT_INIT`.
    ranges : mapping name -> (lo, hi) or None, optional
        Soft clamp ranges; missing keys take :data:`DEFAULT_RANGES`.
    hidden, layers : int
        Width and number of hidden layers of every MLP (paper: 64, 3).
    phase_in_dim : int, optional
        Feature width of the phase MLP if it reads a separate encoding (default ``in_dim``).
    phase0_scale : float
        rad per unit of raw phase output.
    b0_scale_hz : float
        Hz per unit of raw B0 output (so that Adam steps of ~lr move B0 by a useful amount).
    out_init_scale : float
        Output-layer weight scale at init (see :class:`MLP`).
    clamp_sharpness : float
        Softplus sharpness of the log-domain clamp.
    seed : int or None
        Seed for the weight initialisation (global RNG untouched); None uses the global RNG.
    """

    def __init__(self, in_dim: int, init: Mapping[str, float] | None = None,
                 ranges: Mapping[str, tuple[float, float] | None] | None = None, hidden: int = 64,
                 layers: int = 3, phase_in_dim: int | None = None, phase0_scale: float = 1.0,
                 b0_scale_hz: float = 10.0, out_init_scale: float = 1e-3, clamp_sharpness: float = 20.0,
                 seed: int | None = 0) -> None:
        super().__init__()
        init = {**DEFAULT_INIT, **(init or {})}
        ranges = {**DEFAULT_RANGES, **(ranges or {})}
        unknown = (set(init) | set(ranges)) - set(MAG_PARAMS)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {MAG_PARAMS}")
        for name in MAG_PARAMS:
            if not init[name] > 0:
                raise ValueError(f"init[{name!r}] must be > 0, got {init[name]}")
            r = ranges[name]
            if r is not None and not 0 < r[0] < init[name] < r[1]:
                raise ValueError(f"init[{name!r}]={init[name]} must lie inside range {r}")
        self.init = init
        self.ranges = ranges
        self.phase0_scale = float(phase0_scale)
        self.b0_scale_hz = float(b0_scale_hz)
        self.clamp_sharpness = float(clamp_sharpness)
        with _seeded(seed):
            self.mag = nn.ModuleDict({
                name: MLP(in_dim, 1, hidden, layers, out_init_scale=out_init_scale) for name in MAG_PARAMS
            })
            self.phase = MLP(in_dim if phase_in_dim is None else phase_in_dim, 2, hidden, layers,
                             out_init_scale=out_init_scale)
        log_init = torch.tensor([math.log(init[n]) for n in MAG_PARAMS])
        self.register_buffer("_log_init", log_init, persistent=False)

    def forward(self, features: torch.Tensor, phase_features: torch.Tensor | None = None,
                phase0_prior: torch.Tensor | None = None, b0_prior: torch.Tensor | None = None,
                mag_prior: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Per-point parameters.

        Parameters
        ----------
        features : float32 (N, in_dim)
        phase_features : float32 (N, phase_in_dim), optional
            Input of the phase MLP (default ``features``).
        phase0_prior : float (N,) rad, optional
        b0_prior : float (N,) Hz, optional
            Fixed additive priors of Phase0 / B0.
        mag_prior : mapping name -> positive float (N,), optional
            Per-point values that replace the scalar ``init`` of A / T1 / T2 / T2star (e.g. a data-driven A).

        Returns
        -------
        dict of float32 (N,): 'A' (a.u.), 'T1', 'T2', 'T2star' (ms; all positive), 'Phase0' (rad), 'B0' (Hz).
        """
        out: dict[str, torch.Tensor] = {}
        mag_prior = mag_prior or {}
        if set(mag_prior) - set(MAG_PARAMS):
            raise ValueError(f"mag_prior keys must be among {MAG_PARAMS}, got {sorted(mag_prior)}")
        for i, name in enumerate(MAG_PARAMS):
            raw = self.mag[name](features).squeeze(-1)
            log0 = torch.log(mag_prior[name]) if name in mag_prior else self._log_init[i]
            u = raw + log0
            r = self.ranges[name]
            if r is not None:
                u = soft_clamp_log(u, r[0], r[1], self.clamp_sharpness)
            out[name] = torch.exp(u)
        raw = self.phase(features if phase_features is None else phase_features)
        phase0 = self.phase0_scale * raw[:, 0]
        b0 = self.b0_scale_hz * raw[:, 1]
        out["Phase0"] = phase0 if phase0_prior is None else phase0 + phase0_prior
        out["B0"] = b0 if b0_prior is None else b0 + b0_prior
        return out


class MapINR(nn.Module):
    """Coordinates -> hash encoding(s) -> :class:`ParameterHeads`.

    Parameters
    ----------
    grid : HashGridConfig
        Encoding of the magnitude heads (and of the phase head unless ``phase_grid`` is given).
    phase_grid : HashGridConfig, optional
        Separate encoding for the phase head (a smoother B0 often wants fewer levels).
    n_input_dims : int
    seed : int
        Seeds the tables (``seed``, ``seed + 1``) and the MLPs (``seed + 2``).
    **head_kwargs
        Passed to :class:`ParameterHeads` (init, ranges, hidden, layers, b0_scale_hz, ...).
    """

    def __init__(self, grid: HashGridConfig, phase_grid: HashGridConfig | None = None, n_input_dims: int = 3,
                 seed: int = 0, **head_kwargs) -> None:
        super().__init__()
        self.encoding = make_encoding(grid, n_input_dims, seed=seed)
        self.phase_encoding = (None if phase_grid is None
                               else make_encoding(phase_grid, n_input_dims, seed=seed + 1))
        phase_in = None if self.phase_encoding is None else self.phase_encoding.n_output_dims
        self.heads = ParameterHeads(self.encoding.n_output_dims, phase_in_dim=phase_in, seed=seed + 2,
                                    **head_kwargs)

    def forward(self, coords: torch.Tensor, phase0_prior: torch.Tensor | None = None,
                b0_prior: torch.Tensor | None = None,
                mag_prior: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """coords float32 (N, D) in [0, 1] -> dict of (N,) maps (see :meth:`ParameterHeads.forward`)."""
        feats = self.encoding(coords)
        pfeats = None if self.phase_encoding is None else self.phase_encoding(coords)
        return self.heads(feats, pfeats, phase0_prior, b0_prior, mag_prior)

    def set_active_levels(self, n: int) -> None:
        """Coarse-to-fine: enable the first ``n`` levels of every encoding."""
        for enc in (self.encoding, self.phase_encoding):
            if enc is not None:
                enc.set_active_levels(n)


class CoilINR(nn.Module):
    """Coil sensitivities as a small hash grid + MLP with ``2 * n_coils`` outputs (real, imaginary).

    ``prior_mode`` fixes how an optional per-point complex prior (e.g. estimated low-res coil maps) enters:
    ``"add"`` (default): ``sens = prior + net`` — can correct the prior anywhere, also where it is ~0;
    ``"mul"``: ``sens = prior * (1 + net)`` — keeps the prior's support and phase structure, a relative
    correction. Without a prior ``sens = net``; then build with ``out_init_scale=None`` (default init) so that
    the initial sensitivities are not ~0.

    ``keep_rss``: rescale the corrected sensitivities per point to the root-sum-of-squares over coils of the
    prior, ``sens <- sens * rss(prior) / rss(sens)``, so the INR corrects the coil profiles and phases but not
    their overall magnitude, which the amplitude A would otherwise trade against (the A-coil scale ambiguity).

    Parameters
    ----------
    cfg : HashGridConfig
        Coil grid (e.g. 4 levels, 2^10, base 2; MoCo-MP-qMRI uses 8 levels, 2^4, base 1, scale 1.5).
    n_coils : int
    hidden, layers : int
        MLP size (default 2 x 32).
    prior_mode : {"add", "mul"}
    out_init_scale : float or None
    keep_rss : bool
    n_input_dims, seed : int
    """

    def __init__(self, cfg: HashGridConfig, n_coils: int, hidden: int = 32, layers: int = 2,
                 prior_mode: str = "add", out_init_scale: float | None = 1e-3, keep_rss: bool = False,
                 n_input_dims: int = 3, seed: int = 0) -> None:
        super().__init__()
        if prior_mode not in ("add", "mul"):
            raise ValueError(f"prior_mode must be 'add' or 'mul', got {prior_mode!r}")
        self.n_coils = n_coils
        self.prior_mode = prior_mode
        self.keep_rss = keep_rss
        self.encoding = make_encoding(cfg, n_input_dims, seed=seed)
        with _seeded(seed + 1):
            self.mlp = MLP(self.encoding.n_output_dims, 2 * n_coils, hidden, layers,
                           out_init_scale=out_init_scale)

    def forward(self, coords: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """coords float32 (N, D) in [0, 1]; prior complex64 (N, C) or None -> complex64 sens (N, C)."""
        raw = self.mlp(self.encoding(coords)).view(-1, self.n_coils, 2)
        net = torch.complex(raw[..., 0], raw[..., 1])
        if prior is None:
            return net
        if prior.shape != net.shape:
            raise ValueError(f"coil prior must have shape {tuple(net.shape)}, got {tuple(prior.shape)}")
        sens = prior + net if self.prior_mode == "add" else prior * (1 + net)
        if self.keep_rss:
            rss = lambda s: s.abs().square().sum(-1, keepdim=True).sqrt()  # noqa: E731
            sens = sens * (rss(prior) / rss(sens).clamp_min(1e-12))
        return sens
