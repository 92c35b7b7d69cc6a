"""The `effattn` command line: the top layer. It imports the rest of the package; nothing in the
package imports it. Each command lives in its own module and is added to the group here. Usage
errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import sys

import click

from .._version import __version__
from ..errors import EffattnError
from .bench import bench
from .common import EXIT_USAGE, UsageFail, fail
from .plugins import check, info, list_cmd, new_plugin
from .report import compare, report

__all__ = ["cli", "main", "fail", "UsageFail", "EXIT_USAGE"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="effattn")
def cli():
    """effattn: benchmark efficient attention - time, memory and accuracy across sequence lengths."""


for _command in (list_cmd, info, check, new_plugin, bench, report, compare):
    cli.add_command(_command)


def main(argv=None):
    try:
        rv = cli.main(args=argv, prog_name="effattn", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("effattn: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        # Click's usage errors span several lines; ours is one.
        click.echo(f"effattn: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code if isinstance(e, UsageFail) else EXIT_USAGE)
    except EffattnError as e:
        click.echo(f"effattn: error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(rv if isinstance(rv, int) else 0)
