"""Built-in object-store backends (installed as ``rayr.backends``)."""
