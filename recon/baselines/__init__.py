"""Baselines: dictionary matching, temporal-subspace SENSE + TV (ADMM), and the BART peer.

Modules: ``dictionary`` (atoms, matching), ``coilmaps`` (coil maps, coil compression), ``sense`` (subspace
SENSE operator, CG), ``jsense`` (joint coil-map refinement), ``subspace`` (``subspace_recon``), ``bart``
(``bart_recon`` via the BART CLI), ``synthetic`` (a tiny test object from the exact forward model).
"""
