"""Errors a user can cause. The CLI prints them as one line and exits 2; the API raises them."""


class EffattnError(Exception):
    """Base class for errors caused by what the user asked for (not bugs)."""


class UnknownAttentionError(EffattnError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OptionError(EffattnError, ValueError):
    """An option that a plugin does not take, or a value outside its allowed range."""


class UnsupportedError(EffattnError, ValueError):
    """A plugin asked to do what it declares it cannot (a mask, a device, a dtype)."""
