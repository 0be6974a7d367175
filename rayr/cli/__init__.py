"""The ``rayr`` command line."""
