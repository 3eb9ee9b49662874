"""The MRD wire: one codec (``codec``), the server-side connection (``connection``), the standalone server
(``server`` + per-client ``handler``), the gadget launcher (``launch``) and the replay client (``replay``)."""
