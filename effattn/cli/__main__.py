"""`python -m effattn.cli ...` is the `effattn` command."""

from . import main

main()
