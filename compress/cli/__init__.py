"""The command-line interface (thin: parse, call the Python API, map errors to exit codes)."""
