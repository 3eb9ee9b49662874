"""Reconstruction methods, one config class + one solver each, registered once in :mod:`.registry`:
``summit`` (INR), ``subspace`` (temporal-subspace SENSE + TV baseline), ``bart`` (BART peer)."""
