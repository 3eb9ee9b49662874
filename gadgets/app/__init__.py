"""The application around the plugin: the ``qmapinr`` command line (``cli``), ``bench`` and the output writers."""
