"""The `effattn` command line: the top layer. It imports the rest of the package; nothing in the
package imports it. Each command lives in its own module and is added to the group here. Usage
errors print one line and exit 2, never a traceback."""

from __future__ import annotations

import sys

import click

from .._version import __version__
from ..errors import EffattnError
from . import advise as _advise
from . import bench as _bench
from . import plugins as _plugins
from . import report as _report
from .common import EXIT_USAGE, UsageFail, fail

__all__ = ["cli", "main", "fail", "UsageFail", "EXIT_USAGE"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="effattn")
def cli():
    """effattn: benchmark efficient attention - time, memory and accuracy across sequence lengths."""


# (the modules keep their names: effattn.cli.bench is the module, its command is .bench.bench)
for _command in (_plugins.list_cmd, _plugins.info, _plugins.check, _plugins.new_plugin, _bench.bench,
                 _bench.presets_cmd, _report.report, _report.compare, _advise.advise):  # fmt: skip
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
        sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    sys.exit(rv if isinstance(rv, int) else 0)
