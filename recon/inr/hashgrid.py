"""Multiresolution hash encoding (Mueller et al. 2022, Instant-NGP) in pure PyTorch; tiny-cuda-nn switch.

Level ``l`` divides the unit cube into ``cells_l = floor(base_resolution * per_level_scale**l)`` cells per
axis, i.e. ``(cells_l + 1)**D`` vertices. A level whose vertices fit in the table
(``(cells_l + 1)**D <= 2**log2_hashmap_size``) is stored DENSE (direct row-major indexing, collision-free,
only ``(cells_l + 1)**D`` rows); finer levels use the Instant-NGP spatial hash
``((c_0 * 1) ^ (c_1 * 2654435761) ^ (c_2 * 805459861)) & (T - 1)`` into ``T`` rows. All levels live in ONE
``nn.Parameter`` ``table`` of shape ``(total_rows, n_features_per_level)`` with per-level row offsets, so the
2**D corner lookups of all levels are a single gather and the gradient a single scatter.

Coordinates: float32 ``(N, D)`` in ``[0, 1]`` (values outside are clamped). The encoding has no notion of
voxel size: for an anisotropic volume the CALLER normalises, e.g. with :func:`voxel_coordinates`, dividing
every axis by the largest physical extent so that one grid cell has the same size in mm along every axis and
the short axes span ``[0, extent_d / max_extent]`` (the unused part of the table is then simply never
touched).

Differences from tiny-cuda-nn (so weights are not interchangeable): vertices sit at ``k / cells_l`` (tcnn adds
a half-cell offset and uses ``ceil(base * s**l - 1) + 1`` vertices), and dense levels are not padded to a
multiple of 8.
"""

from __future__ import annotations

import importlib
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from qmapinr.recon.config import HashGridConfig

log = logging.getLogger(__name__)

#: Instant-NGP / tiny-cuda-nn hash primes, one per input dimension (the first is 1).
PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def _units(table: torch.Tensor, fast: bool) -> torch.Tensor:
    """View ``table`` (M, F) as gather units: complex (M,) if F=2, (M, F/2) if F even (``fast``), else (M, F).

    Gathering and scattering whole 8-byte complex scalars along a 1-D tensor is 3-4x faster on CPU than moving
    2-float rows, and keeps every elementwise op free of a tiny broadcast trailing axis.
    """
    m, nf = table.shape
    if not fast or nf % 2 or table.dtype not in (torch.float32, torch.float64):
        return table
    units = torch.view_as_complex(table.view(m, nf // 2, 2))
    return units.view(m) if nf == 2 else units


def _to_units(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Real (..., F) -> the unit layout of ``like`` (see :func:`_units`)."""
    if not like.is_complex():
        return x
    u = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return u.squeeze(-1) if like.ndim == 1 else u


def _from_units(u: torch.Tensor, nf: int) -> torch.Tensor:
    """Unit layout (..., [k]) -> real (..., F)."""
    if not u.is_complex():
        return u
    r = torch.view_as_real(u)
    return r if nf == 2 else r.flatten(-2)


class _GridGather(torch.autograd.Function):
    """``out[l, n] = sum_c w[c, l, n] * table[idx[c, l, n]]`` with a hand-written (dense or sparse) gradient.

    Shapes: table (M, F); idx int64 (C, L, N); w float (C, L, N); out (L, N, F). Points are the innermost axis
    so the elementwise ops run over long contiguous rows. With ``fast`` (CPU, even F) rows are gathered and
    scattered as complex scalars (see :func:`_units`). The dense backward is one
    ``scatter_add_``/``index_add_`` into a zero table (much faster on CPU than autograd's
    ``index_put_(accumulate=True)``); the sparse backward returns an uncoalesced COO tensor (for
    :class:`torch.optim.SparseAdam`).
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, sparse: bool,
                fast: bool) -> torch.Tensor:
        units = _units(table, fast)
        flat = idx.reshape(-1)
        corners = units.index_select(0, flat).view(*idx.shape, *units.shape[1:])
        wv = w.view(*w.shape, *([1] * (units.ndim - 1)))
        ctx.save_for_backward(table, idx, w)
        ctx.sparse, ctx.fast = sparse, fast
        return _from_units((corners * wv).sum(0), table.shape[1]).reshape(*idx.shape[1:], table.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, idx, w = ctx.saved_tensors
        nf = table.shape[1]
        units = _units(table, ctx.fast)
        flat = idx.reshape(-1)
        g = _to_units(grad_out, units)  # (L, N[, k])
        wv = w.view(*w.shape, *([1] * (units.ndim - 1)))
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            vals = (wv * g.unsqueeze(0)).reshape(-1, *units.shape[1:])
            if ctx.sparse:
                grad_table = torch.sparse_coo_tensor(flat.view(1, -1), _from_units(vals, nf).reshape(-1, nf),
                                                     table.shape, check_invariants=False)
            else:
                gu = torch.zeros_like(units)
                if gu.ndim == 1:
                    gu.scatter_add_(0, flat, vals)
                else:
                    gu.index_add_(0, flat, vals)
                grad_table = _from_units(gu, nf).reshape(table.shape)
        if ctx.needs_input_grad[2]:
            corners = units.index_select(0, flat).view(*idx.shape, *units.shape[1:])
            prod = corners * g.conj().unsqueeze(0) if g.is_complex() else corners * g.unsqueeze(0)
            prod = prod.real if prod.is_complex() else prod
            grad_w = prod.sum(-1) if units.ndim > 1 else prod
        return grad_table, None, grad_w, None, None


def _combine(parts: list[torch.Tensor], op: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """Combine per-axis (lower, upper) corner values ``parts[k]`` (2, L, N) over D axes into (2**D, L, N).

    Corner ``c`` takes the upper value of axis ``k`` iff bit ``D-1-k`` of ``c`` is set (axis 0 most
    significant). The Python loop runs over the D axes only; each step is one op broadcasting over LEADING
    axes (fast on CPU). ``out`` (optional, not autograd-tracked) receives the result without an extra copy.
    """
    fn = {"add": torch.add, "xor": torch.bitwise_xor, "mul": torch.mul}[op]
    tail = parts[0].shape[1:]
    d = len(parts)
    cur = parts[0]
    if d == 1:
        return cur if out is None else out.copy_(cur)
    for k in range(1, d):
        a, b = cur.unsqueeze(k), parts[k].view(*([1] * k), 2, *tail)
        if k == d - 1 and out is not None:
            fn(a, b, out=out.view(*([2] * d), *tail))
            return out
        cur = fn(a, b)
    return cur.reshape(2**d, *tail)


class HashEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash grid with trilinear (D-linear) interpolation.

    Parameters
    ----------
    cfg : HashGridConfig
        ``n_levels``, ``n_features_per_level``, ``log2_hashmap_size``, ``base_resolution`` (cells per axis of
        level 0), ``per_level_scale``. ``cfg.implementation`` is ignored here (this class IS the torch
        backend; use :func:`make_encoding` to dispatch).
    n_input_dims : int
        D, 1..7 (3 for volumes).
    sparse_grad : bool
        If True the table gradient is a sparse COO tensor; optimise ``table`` with
        :class:`torch.optim.SparseAdam` (see :func:`split_parameters`). Dense (False) is the default;
        ``bench_encoding`` measures both.
    seed : int or None
        Seed for the table initialisation (uniform in [-1e-4, 1e-4] as tiny-cuda-nn); None uses the global
        RNG.

    Attributes
    ----------
    table : nn.Parameter, float32 (total_rows, n_features_per_level)
    cells : list[int]      cells per axis of each level
    dense_levels : int     number of leading (coarse) levels stored densely
    active_levels : int    levels >= this output zeros (coarse-to-fine schedules); default all
    n_output_dims : int    n_levels * n_features_per_level
    """

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3, sparse_grad: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__()
        if not 1 <= n_input_dims <= len(PRIMES):
            raise ValueError(f"n_input_dims must be in 1..{len(PRIMES)}, got {n_input_dims}")
        if cfg.n_levels < 1 or cfg.n_features_per_level < 1 or cfg.base_resolution < 1:
            raise ValueError(f"invalid hash grid config {cfg}")
        if not 1 <= cfg.log2_hashmap_size <= 30:
            raise ValueError(f"log2_hashmap_size must be in 1..30, got {cfg.log2_hashmap_size}")
        if cfg.per_level_scale < 1.0:
            raise ValueError(f"per_level_scale must be >= 1, got {cfg.per_level_scale}")
        self.cfg = cfg
        self.n_input_dims = d = n_input_dims
        self.n_levels = cfg.n_levels
        self.n_features_per_level = cfg.n_features_per_level
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        self.sparse_grad = sparse_grad
        #: gather/scatter table rows as complex scalars on CPU (even F); False = plain float rows (any device)
        self.fast_gather = True
        size = 1 << cfg.log2_hashmap_size
        self.hashmap_size = size
        self.cells = [max(1, int(math.floor(cfg.base_resolution * cfg.per_level_scale**lv + 1e-9)))
                      for lv in range(cfg.n_levels)]
        if self.cells[-1] >= 2**30:  # keeps vertex * prime < 2**63 in the int64 hash
            raise ValueError(f"finest level has {self.cells[-1]} cells per axis; at most 2**30 - 1 supported")
        dense = [(c + 1) ** d <= size for c in self.cells]
        # resolutions grow with the level, so the dense levels are a leading block
        self.dense_levels = dense.index(False) if False in dense else len(dense)
        rows = [(c + 1) ** d if is_dense else size for c, is_dense in zip(self.cells, dense, strict=True)]
        offsets = [0]
        for r in rows[:-1]:
            offsets.append(offsets[-1] + r)
        self.level_rows = rows
        self.active_levels = cfg.n_levels

        self.register_buffer("_cells", torch.tensor(self.cells, dtype=torch.float32), persistent=False)
        self.register_buffer("_cells_int", torch.tensor(self.cells, dtype=torch.int64), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        strides = torch.tensor([[(c + 1) ** k for k in range(d)] for c in self.cells], dtype=torch.int64)
        self.register_buffer("_strides", strides, persistent=False)  # (L, D), axis 0 fastest
        self.register_buffer("_primes", torch.tensor(PRIMES[:d], dtype=torch.int64), persistent=False)

        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        table = torch.rand(sum(rows), cfg.n_features_per_level, generator=gen) * 2e-4 - 1e-4
        self.table = nn.Parameter(table)

    # ------------------------------------------------------------------ indices
    def level_indices(self, x: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and interpolation weights of the 2**D corners of every level.

        Parameters
        ----------
        x : float (N, D) in [0, 1] (clamped)
        levels : int, optional
            Only the first ``levels`` levels (default all).

        Returns
        -------
        idx : int64 (2**D, levels, N)  rows of ``table`` (level offsets included)
        w : float (2**D, levels, N)    D-linear weights, summing to 1 over the corners
        """
        nl = self.n_levels if levels is None else levels
        nd = min(self.dense_levels, nl)
        n, d = x.shape[0], self.n_input_dims
        xt = x.clamp(0.0, 1.0).t()  # (D, N)
        cells_f, cells_max = self._cells[:nl, None], self._cells_int[:nl, None] - 1
        offsets = self._offsets[:nl, None]
        wparts, dparts, hparts = [], [], []
        for k in range(d):
            pos = cells_f * xt[k]  # (L, N), >= 0 so truncation == floor
            base = torch.minimum(pos.detach().long(), cells_max)
            frac = pos - base
            wparts.append(torch.stack((1.0 - frac, frac)))
            if nd > 0:  # row-major vertex index; the level offset is folded into axis 0
                stride = self._strides[:nd, k, None]
                lo = base[:nd] * stride
                if k == 0:
                    lo += offsets[:nd]
                dparts.append(torch.stack((lo, lo + stride)))
            if nl > nd:
                lo = base[nd:] * self._primes[k]
                hparts.append(torch.stack((lo, lo + self._primes[k])))
        w = _combine(wparts, "mul")
        idx = torch.empty(2**d, nl, n, dtype=torch.int64, device=x.device)
        if nd > 0:
            _combine(dparts, "add", out=idx[:, :nd])
        if nl > nd:
            hashed = _combine(hparts, "xor", out=idx[:, nd:])
            hashed.bitwise_and_(self.hashmap_size - 1).add_(offsets[nd:])
        return idx, w

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, active_levels: int | None = None) -> torch.Tensor:
        """Encode coordinates.

        Parameters
        ----------
        x : float32 (N, D)
            Normalised coordinates in [0, 1] (see the module docstring for anisotropic volumes).
        active_levels : int, optional
            Overrides ``self.active_levels``; levels ``>= active_levels`` are not computed and output zeros.

        Returns
        -------
        float32 (N, n_levels * n_features_per_level), level-major (level l in columns ``l*F:(l+1)*F``).
        """
        if x.ndim != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(f"expected coordinates (N, {self.n_input_dims}), got {tuple(x.shape)}")
        nl = self.active_levels if active_levels is None else active_levels
        nl = max(0, min(int(nl), self.n_levels))
        n, nf = x.shape[0], self.n_features_per_level
        if nl == 0:
            return x.new_zeros(n, self.n_output_dims)
        idx, w = self.level_indices(x.to(self.table.dtype), nl)
        fast = self.fast_gather and self.table.device.type == "cpu"
        out = _GridGather.apply(self.table, idx, w, self.sparse_grad, fast)  # (L, N, F)
        out = out.permute(1, 0, 2).reshape(n, nl * nf)
        if nl < self.n_levels:
            out = F.pad(out, (0, (self.n_levels - nl) * nf))
        return out

    def set_active_levels(self, n: int) -> None:
        """Switch on the first ``n`` levels (coarse-to-fine); clipped to ``[0, n_levels]``."""
        self.active_levels = max(0, min(int(n), self.n_levels))

    def extra_repr(self) -> str:
        return (f"levels={self.n_levels}, features={self.n_features_per_level}, "
                f"table=2^{self.cfg.log2_hashmap_size}, cells={self.cells}, "
                f"dense_levels={self.dense_levels}, rows={self.table.shape[0]}, "
                f"sparse_grad={self.sparse_grad}")


class TcnnEncoding(nn.Module):
    """tiny-cuda-nn ``HashGrid`` encoding with the :class:`HashEncoding` interface (CUDA only).

    Output is cast to float32. ``active_levels`` zeroes the trailing levels' columns (tcnn still computes
    them).
    """

    def __init__(self, cfg: HashGridConfig, n_input_dims: int = 3) -> None:
        super().__init__()
        ok, why = tcnn_available()
        if not ok:
            raise RuntimeError(f"HashGridConfig.implementation='tcnn' but tiny-cuda-nn cannot run: {why}")
        tcnn = importlib.import_module("tinycudann")
        self.n_input_dims = n_input_dims
        self.n_levels = cfg.n_levels
        self.n_features_per_level = cfg.n_features_per_level
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        self.active_levels = cfg.n_levels
        self.sparse_grad = False
        self.enc = tcnn.Encoding(n_input_dims, {
            "otype": "HashGrid", "n_levels": cfg.n_levels, "n_features_per_level": cfg.n_features_per_level,
            "log2_hashmap_size": cfg.log2_hashmap_size, "base_resolution": cfg.base_resolution,
            "per_level_scale": cfg.per_level_scale,
        })

    def forward(self, x: torch.Tensor, active_levels: int | None = None) -> torch.Tensor:
        """x float32 (N, D) in [0, 1] on CUDA -> float32 (N, n_levels * n_features_per_level)."""
        out = self.enc(x.clamp(0.0, 1.0)).float()
        nl = self.active_levels if active_levels is None else active_levels
        nl = max(0, min(int(nl), self.n_levels))
        if nl < self.n_levels:
            keep = torch.arange(self.n_output_dims, device=out.device) < nl * self.n_features_per_level
            out = out * keep.to(out.dtype)
        return out

    def set_active_levels(self, n: int) -> None:
        self.active_levels = max(0, min(int(n), self.n_levels))


def tcnn_available() -> tuple[bool, str]:
    """(True, "") if tinycudann imports and CUDA is available, else (False, reason)."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        importlib.import_module("tinycudann")
    except ImportError as exc:
        return False, f"tinycudann does not import ({exc})"
    return True, ""


def make_encoding(cfg: HashGridConfig, n_input_dims: int = 3, sparse_grad: bool = False,
                  seed: int | None = 0) -> nn.Module:
    """Encoding for ``cfg.implementation``: 'torch' -> :class:`HashEncoding`, 'tcnn' -> :class:`TcnnEncoding`
    (RuntimeError if tinycudann/CUDA is missing), 'auto' -> tcnn when it can run, else torch (logged)."""
    impl = cfg.implementation.lower()
    if impl == "torch":
        return HashEncoding(cfg, n_input_dims, sparse_grad=sparse_grad, seed=seed)
    if impl == "tcnn":
        return TcnnEncoding(cfg, n_input_dims)
    if impl == "auto":
        ok, why = tcnn_available()
        if ok:
            log.info("hash grid: using tiny-cuda-nn")
            return TcnnEncoding(cfg, n_input_dims)
        log.info("hash grid: using the pure-PyTorch encoding (%s)", why)
        return HashEncoding(cfg, n_input_dims, sparse_grad=sparse_grad, seed=seed)
    raise ValueError(f"HashGridConfig.implementation must be 'torch', 'tcnn' or 'auto', "
                     f"got {cfg.implementation!r}")


def split_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse, dense) parameter lists; sparse = tables of :class:`HashEncoding` with ``sparse_grad``."""
    sparse_ids = {id(m.table) for m in module.modules() if isinstance(m, HashEncoding) and m.sparse_grad}
    sparse = [p for p in module.parameters() if id(p) in sparse_ids]
    dense = [p for p in module.parameters() if id(p) not in sparse_ids]
    return sparse, dense


def voxel_coordinates(shape: tuple[int, ...], spacing_mm: tuple[float, ...] | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised voxel-centre coordinates for an array of ``shape`` with voxel size ``spacing_mm``.

    Axis ``k`` of the result corresponds to array axis ``k`` (so for maps ``(nz, ny, nx)`` the columns are z,
    y, x). Every axis is divided by the LARGEST physical extent ``max_k shape[k] * spacing_mm[k]``, so grid
    cells are isotropic in mm and axis ``k`` spans ``[0, extent_k / max_extent]``.

    Returns
    -------
    float32 (*shape, len(shape))
    """
    spacing = tuple(1.0 for _ in shape) if spacing_mm is None else tuple(float(s) for s in spacing_mm)
    if len(spacing) != len(shape):
        raise ValueError(f"spacing_mm {spacing} does not match shape {shape}")
    extent = max(n * s for n, s in zip(shape, spacing, strict=True))
    axes = [(torch.arange(n, dtype=torch.float64, device=device) + 0.5) * s / extent
            for n, s in zip(shape, spacing, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).float()
