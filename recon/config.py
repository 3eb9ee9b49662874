"""Typed, frozen reconstruction configs, parsed once from Gadgetron XML properties / CLI ``key=value`` pairs.

Field names of :class:`HashGridConfig` follow tiny-cuda-nn (``n_levels``, ``n_features_per_level``,
``log2_hashmap_size``, ``base_resolution``, ``per_level_scale``). Nested fields are addressed with a dot in
properties: ``map_grid.n_levels=12``. An unknown property is an error naming the known ones.

Option fields are ``typing.Literal[...]``: a property value is checked when it is parsed (case-insensitively, then
stored with the spelling of the allowed value) and the error lists the allowed values; :func:`check_literals`
checks a config that was built directly in Python. Checks of a config against the data (sizes, WNNM patch vs
matrix, ranges) live in :mod:`qmapinr.recon.methods.validate`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


class ConfigError(ValueError):
    """A property does not name a config field or cannot be parsed to the field's type."""


Implementation = Literal["auto", "torch", "tcnn"]
CoilMode = Literal["inr", "jsense", "ratio"]
ForwardModel = Literal["structured", "exact"]
InitMode = Literal["echo", "dictionary", "flat"]
DeviceName = Literal["auto", "cpu", "cuda"]
CoilCompression = Literal["global", "geometric"]
KeepRss = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class HashGridConfig:
    """Multiresolution hash encoding (Mueller et al. 2022); resolution of level l = base * scale**l.

    ``implementation``: "torch" (pure PyTorch, default) or "tcnn" (tiny-cuda-nn on CUDA, if importable);
    "auto" picks tcnn when it can run and torch otherwise.
    """

    n_levels: int = 8
    n_features_per_level: int = 2
    log2_hashmap_size: int = 15
    base_resolution: int = 4
    per_level_scale: float = 1.5
    implementation: Implementation = "auto"


@dataclass(frozen=True)
class DictionaryFitConfig:
    """Dictionary-matching settings shared by the dictionary-based methods (subspace baseline, BART peer).

    Log-spaced T1 and T2 grids (ms) of the signal dictionary, parabolic sub-grid refinement of the matched values,
    and the support threshold (fraction of the maximum coefficient-image magnitude).
    """

    t1_min_ms: float = 100.0
    t1_max_ms: float = 5000.0
    n_t1: int = 80
    t2_min_ms: float = 10.0
    t2_max_ms: float = 2500.0
    n_t2: int = 60
    refine: bool = True
    mask_threshold: float = 0.05

    @property
    def t1_range_ms(self) -> tuple[float, float]:
        return (self.t1_min_ms, self.t1_max_ms)

    @property
    def t2_range_ms(self) -> tuple[float, float]:
        return (self.t2_min_ms, self.t2_max_ms)


@dataclass(frozen=True)
class SummitConfig:
    """SUMMIT INR reconstruction settings. Defaults are CPU-sized; the paper's are listed in docs/design.md.

    The schedule keeps the paper's shape (Adam, lr halved every 20 epochs, WNNM switched on half-way as in the
    authors' related code) but starts at lr 1e-2: a small volume gives ~10 Adam steps per epoch instead of the
    paper's hundreds, and 1e-3 does not converge in 60 epochs (BENCHMARKS.md). The WNNM lambdas are relative to
    the initial data-consistency loss. Learning rate per Adam step, ``lr_step`` and ``wnnm_start_epoch`` in epochs
    of ``schedule_steps_per_epoch`` steps: a volume with longer epochs (more readout positions per ``batch_x``)
    runs the schedule shortened to the same number of steps (:mod:`qmapinr.recon.methods.schedule`).
    """

    epochs: int = 60
    lr: float = 1e-2
    lr_step: int = 20
    lr_gamma: float = 0.5
    batch_x: int = 4  # readout positions per Adam step (capped by memory_budget_mb)
    memory_budget_mb: float = 2048.0  # working set of one x batch (MiB); 0 = batch_x as given
    hidden: int = 64
    layers: int = 3
    map_grid: HashGridConfig = field(default_factory=HashGridConfig)
    coil_grid: HashGridConfig = field(
        default_factory=lambda: HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=2,
                                               per_level_scale=1.5)
    )
    coil_mode: CoilMode = "inr"  # "ratio" / "jsense" (fixed estimated maps) or "inr" (coil INR from the jsense maps)
    coil_lr_scale: float = 1.0  # learning-rate multiplier of the coil INR
    # coil INR keeps the prior's root-sum-of-squares per voxel (no A-coil scale trade); "auto" = on when the data
    # were coil-compressed (measured better there, worse on uncompressed data: docs/benchmarks/epoch.md, round 8)
    coil_keep_rss: KeepRss = "auto"
    coil_refine_iters: int = 8  # JSENSE alternations of the coil-map estimate
    forward: ForwardModel = "structured"  # "structured" (rank-K q^n subspace) or "exact"
    rank: int = 8
    # SVD coil compression (calibration/compression.py): virtual_coils > 0 keeps that many eigen-coils; otherwise,
    # with coil_energy > 0 and more than max(compress_above_coils, min_virtual_coils) coils, the fewest that keep
    # this fraction of the data energy, at least min_virtual_coils; "geometric" = one matrix per readout position
    # x, aligned along x (keeps more energy per virtual coil), "global" = one matrix for the scan. By default only
    # data with more than 16 coils are compressed (24 -> 8 at paper size: 2.5x faster, NRMSE as uncompressed with
    # coil_keep_rss; docs/benchmarks/epoch.md, round 8)
    virtual_coils: int = 0
    coil_energy: float = 0.98
    min_virtual_coils: int = 8
    compress_above_coils: int = 16
    coil_compression: CoilCompression = "geometric"
    lambda_a: float = 0.01  # WNNM weight on A (relative to the initial data-consistency loss; 0 = off)
    lambda_t1_phase: float = 0.01  # WNNM weight on T1 and the phase (B0) map
    lambda_t2: float = 0.01  # WNNM weight on T2 and T2*
    wnnm_start_epoch: int = 30
    wnnm_patch: int = 5
    wnnm_window: int = 7
    wnnm_similar: int = 3
    # "log": WNNM on log(A), log(T1), log(T2), log(T2*) (relative deviations; measured worse NRMSE on the
    # Shepp-Logan-like head, docs/benchmarks/guards.md),
    # "linear": on the maps in units of their median
    wnnm_domain: Literal["log", "linear"] = "linear"
    wnnm_in_support: bool = True  # WNNM only on patches inside the support mask (no background in rim patches)
    # initial maps: "dictionary" (per-voxel low-res dictionary fit of every parameter), "echo" (per-voxel A, T2*,
    # phase; T1 and T2 start flat at their in-mask medians) or "flat" (only the phase per voxel)
    init: InitMode = "echo"
    coarse_to_fine_epochs: int = 0  # >0: one more hash level switched on every this many epochs
    # the T2* head stays at its data-driven prior (the echo fit) for this many epochs while T1/T2 contrast is learnt:
    # before, shared-feature drift pushed T2* towards its 3000 ms bound in the first epochs (summit/model.py)
    t2star_hold_epochs: int = 10
    # the epoch-valued fields (epochs, lr_step, wnnm_start_epoch, t2star_hold_epochs, coarse_to_fine_epochs) are for
    # epochs of this many Adam steps; a volume whose epoch has more steps (nx / batch_x) runs them shortened in
    # proportion, i.e. with the same number of steps (recon/methods/schedule.py; 0 = epochs as given)
    schedule_steps_per_epoch: int = 16
    plateau_rel: float = 0.0  # stop when the epoch DC loss improves by less than this fraction (0 = off)
    seed: int = 0
    device: DeviceName = "auto"  # "auto" (cuda if available), "cpu", "cuda"
    threads: int = 0  # torch CPU threads (0 = torch default)
    # with more than one thread, pick 1 .. threads per measured batch times (recon/methods/threadtune.py); the chain
    # turns it off when the thread count was set explicitly (threads property or environment)
    adaptive_threads: bool = True


def literal_values(tp: typing.Any) -> tuple | None:
    """The allowed values of a ``typing.Literal[...]`` type (None for any other type)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _parse_literal(text: str, allowed: tuple, name: str) -> typing.Any:
    for value in allowed:
        if isinstance(value, str) and text.strip().lower() == value.lower():
            return value
        if not isinstance(value, str) and text.strip() == str(value):
            return value
    raise ConfigError(f"property {name}={text!r} is not allowed; use one of: {', '.join(map(str, allowed))}")


def _parse_value(text: str, tp: typing.Any, name: str) -> typing.Any:
    allowed = literal_values(tp)
    if allowed is not None:
        return _parse_literal(text, allowed, name)
    try:
        if tp is bool:
            low = text.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return low in ("1", "true", "yes", "on")
        if tp in (int, float, str):
            return tp(text)
    except ValueError as exc:
        raise ConfigError(f"property {name}={text!r} is not a valid {tp.__name__}") from exc
    raise ConfigError(f"property {name} has unsupported type {tp}")


def check_literals(cfg: typing.Any, prefix: str = "") -> None:
    """Raise :class:`ConfigError` if an option field of the (nested) dataclass ``cfg`` holds a value outside its
    ``Literal[...]`` (a config built directly in Python bypasses the parser)."""
    prefix = prefix or type(cfg).__name__ + "."
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            check_literals(value, prefix + f.name + ".")
            continue
        allowed = literal_values(hints[f.name])
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{prefix}{f.name}={value!r} is not allowed; use one of: "
                              f"{', '.join(map(str, allowed))}")


def from_properties(cls: type, props: Mapping[str, str], prefix: str = ""):
    """Build a (nested) frozen dataclass ``cls`` from string properties; unknown keys raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    own, nested = {}, {}
    for key, value in props.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            known = ", ".join(sorted(prefix + n for n in fields))
            raise ConfigError(f"unknown property {prefix + key!r}; known: {known}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    kwargs = {}
    for name, value in own.items():
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"property {prefix + name} is a group; set {prefix + name}.<field>")
        kwargs[name] = _parse_value(str(value), hints[name], prefix + name)
    for name, sub in nested.items():
        if not dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"property {prefix + name} has no sub-fields")
        base = dataclasses.asdict(fields[name].default_factory())  # type: ignore[misc]
        base.update({k: v for k, v in sub.items()})
        kwargs[name] = from_properties(hints[name], {k: str(v) for k, v in base.items()}, prefix + name + ".")
    return cls(**kwargs)


def field_names(cls: type, prefix: str = "") -> set[str]:
    """All addressable property names of ``cls`` (nested ones dotted)."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= field_names(hints[f.name], prefix + f.name + ".")
        else:
            out.add(prefix + f.name)
    return out
