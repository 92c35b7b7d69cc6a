"""The report as a standalone HTML page."""

from __future__ import annotations


def to_html(md: str) -> str:
    """The report's markdown as a standalone HTML page, rendered by markdown-it-py (CommonMark with
    GitHub's tables: the same rules GitHub uses to show report.md, so both read alike). Raw HTML in
    the markdown is escaped, never passed through."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>effattn report</title>\n"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}</style>"
        "</head><body>\n" + body + "</body></html>\n"
    )
