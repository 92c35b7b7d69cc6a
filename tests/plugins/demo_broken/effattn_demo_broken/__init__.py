"""A plugin whose dependency is missing: importing it fails, as it would on a user's machine."""
import a_library_that_is_not_installed  # noqa: F401


class BrokenAttention:
    pass
