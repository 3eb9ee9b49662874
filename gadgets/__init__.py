"""Gadgetron plugin: stages, images, chains, properties, transport and the command line.

Importing it sets the OpenMP wait policy of this process (:func:`qmapinr.gadgets.threads.configure_openmp`) before
any of its modules imports torch: Gadgetron starts a chain as ``python -m gadgetron PORT qmapinr.gadgets.chains
TARGET``, so this is the first qmapinr code that runs there.
"""

from qmapinr.gadgets.threads import configure_openmp as _configure_openmp

_configure_openmp()
