"""What every command module shares: the one-line usage failure and warnings on stderr."""

from __future__ import annotations

import click

EXIT_USAGE = 2


class UsageFail(click.ClickException):
    exit_code = EXIT_USAGE


def fail(msg: str):
    """Stop the command with `effattn: error: MSG` on stderr and exit 2."""
    raise UsageFail(msg)


def warn(msg: str) -> None:
    click.echo(f"effattn: warning: {msg}", err=True)


def log(msg: str) -> None:
    click.echo(msg, err=True)
