"""Implicit neural representation building blocks: ``hashgrid`` (multiresolution hash encoding, torch / tcnn),
``heads`` (per-parameter MLP heads, :class:`~qmapinr.recon.inr.heads.MapINR`, coil INR) and ``bench_encoding``
(CPU micro-benchmark, ``python -m qmapinr.recon.inr.bench_encoding``)."""
