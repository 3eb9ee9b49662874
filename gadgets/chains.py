"""Chain entry functions: what Gadgetron 4 (``<execute name="qmapinr.gadgets.chains" target="summit"/>``), the
standalone MRD server and the replay CLI call with a connection.

Every chain is the same generator pipeline over the connection (gadgetron package example style)::

    split_noise -> buffer_kspace -> reconstruct (recon/ solver for this chain) -> maps_to_images -> send

Properties come from the ``<configuration>`` of the ``<external>`` block (``connection.config``) and, on the
standalone server, from JSON parameters of a TEXT message (``connection.parameters``; these win). They are parsed
once into the chain's typed config (:data:`CHAIN_CONFIGS`); an unknown property is an error naming the known ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from qmapinr.gadgets.properties import properties_from_config
from qmapinr.gadgets.stages import buffer_kspace, maps_to_images, split_noise
from qmapinr.gadgets.threads import session_config
from qmapinr.recon.config import from_properties
from qmapinr.recon.kspace import KSpace6D
from qmapinr.recon.methods.registry import METHODS, reconstruct

log = logging.getLogger(__name__)

CHAIN_CONFIGS: dict[str, type] = {name: m.config for name, m in METHODS.items()}
"""Chain name -> typed config dataclass whose fields are the chain's properties."""


def chain_properties(connection: Any) -> dict[str, str]:
    """Properties of the ``<external>`` configuration, overridden by JSON TEXT parameters (server only)."""
    props = properties_from_config(getattr(connection, "config", None))
    props.update({k: str(v) for k, v in (getattr(connection, "parameters", None) or {}).items()})
    return props


def reconstruct_stage(items: Iterable, header, chain: str, cfg: Any) -> Iterator:
    """KSpace6D -> QuantMaps with the chain's solver; other items pass through."""
    for item in items:
        if not isinstance(item, KSpace6D):
            yield item
            continue
        asi = getattr(header, "acquisitionSystemInformation", None)
        if asi is not None and asi.systemFieldStrength_T:
            item.field_strength_t = float(asi.systemFieldStrength_T)  # QSM's Hz -> ppm
        log.info("%s: reconstructing %d lines x %d echoes x %d coils, matrix %s, R=%.2f", chain, item.nlines,
                 item.seq.nte, item.ncoils, item.geometry.matrix, item.acceleration)
        t0 = time.time()
        maps = reconstruct(item, chain, cfg)
        log.info("%s: maps ready in %.1f s", chain, time.time() - t0)
        yield maps


def run_chain(connection: Any, chain: str) -> None:
    """Run chain ``chain`` over ``connection`` until the client closes the stream."""
    cfg = session_config(from_properties(CHAIN_CONFIGS[chain], chain_properties(connection)), chain)  # threads
    log.info("%s chain started with %s", chain, cfg)
    header = connection.header
    items = split_noise(iter(connection), header)
    items = buffer_kspace(items, header)
    items = reconstruct_stage(items, header, chain, cfg)
    items = maps_to_images(items, header)
    sent = 0
    for item in items:
        connection.send(item)
        sent += 1
    log.info("%s chain done: %d items sent", chain, sent)


def summit(connection: Any) -> None:
    """SUMMIT INR reconstruction chain (config_xml/summit.xml)."""
    run_chain(connection, "summit")


def baseline(connection: Any) -> None:
    """Temporal-subspace + TV + dictionary matching baseline chain (config_xml/baseline.xml)."""
    run_chain(connection, "baseline")


CHAINS: dict[str, Callable[[Any], None]] = {"summit": summit, "baseline": baseline}
"""Chain name -> entry function, used by the MRD server to pick a chain from the config name."""
