"""Built-in attention plugins: importing this package registers them. One family per file."""
from . import full, masked  # noqa: F401
