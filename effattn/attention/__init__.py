"""Built-in attention plugins: importing this package registers them. One family per file."""
from . import bigbird, full, masked, sliding_window, sparse  # noqa: F401
