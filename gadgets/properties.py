"""Chain properties: the ``<property name=".." value=".."/>`` pairs of a Gadgetron ``<configuration>``."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def properties_from_config(config) -> dict[str, str]:
    """``name -> value`` of the ``<property>`` children of a ``<configuration>`` element (or its text).

    Accepts the ``Element`` that ``gadgetron.external.Connection`` stores in ``connection.config``, XML text
    or bytes, or None (empty dict). Properties may be nested anywhere under the root.
    """
    if config is None:
        return {}
    if isinstance(config, (bytes, str)):
        text = config.rstrip(b"\x00") if isinstance(config, bytes) else config.rstrip("\x00")
        if not text.strip():
            return {}
        config = ET.fromstring(text)
    return {p.get("name"): p.get("value", "") for p in config.iter("property") if p.get("name") is not None}
