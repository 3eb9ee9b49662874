"""qmapinr: INR-based quantitative MRI (T1, T2, T2*, A, B0, QSM) from T2IR-prepared multi-echo GRE, as
Gadgetron-compatible streaming gadgets.

The required top-level folders are this package's subpackages through symbolic links (``qmapinr/gadgets ->
../gadgets``, ``qmapinr/recon -> ../recon``): a plain package directory that setuptools (``packages = find:``),
the editable install (a static ``src`` path entry, no import hook), ruff's import graph and go-to-definition all follow.
"""
