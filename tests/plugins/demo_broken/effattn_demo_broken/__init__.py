"""A plugin whose dependency is missing: importing it fails, as it would on a user's machine."""

import a_library_that_is_not_installed  # noqa: F401 - failing here is this demo's purpose


class BrokenAttention:
    pass
