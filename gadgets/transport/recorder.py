"""Save a received (or sent) MRD stream as an ISMRMRD file, so that a failed case can be replayed.

``qmapinr serve --save-stream DIR`` writes ``DIR/conn-<number>-<UTC time>.h5`` per connection and
``qmapinr replay FILE --save-stream OUT.h5`` writes what it sent to the gadget. The file holds the XML header and
every acquisition as it arrived (``/dataset/xml``, ``/dataset/data``), readable by ``qmapinr replay``; a sidecar
``<file>.json`` keeps the chain name, the configuration text and the JSON parameters. Acquisitions are written
as they arrive, so a stream that breaks off (or a worker that dies) still leaves what came before it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ismrmrd

logger = logging.getLogger(__name__)


class StreamRecorder:
    """Append acquisitions of one stream to an ISMRMRD file.

    Parameters
    ----------
    path : str or Path
        Output ``.h5`` (parent folders are created; an existing file is replaced).
    header_xml : str
        ISMRMRD XML header of the stream.
    chain, config_text : str
        Chain name and the configuration text the client sent (stored in the sidecar JSON).
    parameters : dict[str, str] or None
        JSON parameters of the stream (sidecar JSON).
    """

    def __init__(self, path, header_xml: str, chain: str = "", config_text: str = "",
                 parameters: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        self.count = 0
        self._dataset = ismrmrd.Dataset(str(self.path), "dataset", create_if_needed=True)
        self._dataset.write_xml_header(header_xml.encode("utf-8") if isinstance(header_xml, str) else header_xml)
        sidecar = {"chain": chain, "config": config_text, "parameters": parameters or {}}
        self.path.with_suffix(self.path.suffix + ".json").write_text(json.dumps(sidecar, indent=1))
        logger.info("saving the stream to %s", self.path)

    def add(self, acq: ismrmrd.Acquisition) -> None:
        """Append one acquisition (flushed at once: the file stays readable if the process dies)."""
        self._dataset.append_acquisition(acq)
        self.count += 1
        handle = getattr(self._dataset, "_file", None)  # ismrmrd.Dataset keeps its h5py.File here
        if handle is not None and self.count % 64 == 0:
            handle.flush()

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None
            logger.info("saved %d acquisitions to %s", self.count, self.path)
