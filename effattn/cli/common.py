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


#: the terminal width effattn's tables and texts fit
WIDTH = 100


def wrap(text: str, width: int = WIDTH, indent: str = "    ", break_long_words: bool = True) -> list[str]:
    """`text` as lines of at most `width` columns, the later ones indented (never broken at a
    hyphen: option names and labels carry them)."""
    import textwrap

    return textwrap.wrap(text, width=width, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=break_long_words) or [""]  # fmt: skip


def log(msg: str) -> None:
    click.echo(msg, err=True)


class StrictCommand(click.Command):
    """A command whose options are given once each. Click keeps the last of a repeated option and
    drops the others silently; here a repeated option is refused in one line, except the comma
    lists named in `joined` (`--attn a --attn b` is `--attn a,b`), whose values are joined."""

    joined: tuple[str, ...] = ("seq_lens", "attn", "fmt")

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, self._once(list(args)))

    def _once(self, args: list[str]) -> list[str]:
        opts = {o: p for p in self.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
        seen: dict[str, list[tuple[int, int, str, str]]] = {}  # name -> (start, end, flag, value)
        i = 0
        while i < len(args):
            a = args[i]
            if a == "--":
                break
            flag, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
            p = opts.get(flag)
            if p is None or p.is_flag or p.count or p.multiple:
                i += 1
                continue
            if not eq:
                if i + 1 >= len(args):
                    break  # click says the value is missing
                value, end = args[i + 1], i + 2
            else:
                end = i + 1
            seen.setdefault(p.name, []).append((i, end, flag, value))
            i = end
        replace: dict[int, list[str]] = {}  # start of a span -> what stands there instead
        skip: dict[int, int] = {}  # start of a span -> its end
        for name, uses in seen.items():
            if len(uses) < 2:
                continue
            if name not in self.joined:
                values = ", ".join(repr(u[3]) for u in uses)
                fail(f"{uses[0][2]} is given {len(uses)} times ({values}): give it once")
            replace[uses[0][0]] = [uses[0][2], ",".join(u[3] for u in uses)]
            for start, end, _, _ in uses:
                skip[start] = end
        out, j = [], 0
        while j < len(args):
            if j in skip:
                out += replace.get(j, [])
                j = skip[j]
            else:
                out.append(args[j])
                j += 1
        return out
