"""The report as a standalone HTML page."""

from __future__ import annotations


def to_html(md: str, plots: dict[str, str] | None = None) -> str:
    """The report's markdown as a standalone HTML page, rendered by markdown-it-py (CommonMark with
    GitHub's tables: the same rules GitHub uses to show report.md, so both read alike). Raw HTML in
    the markdown is escaped, never passed through. `plots`: a paragraph that is exactly one of its
    keys is replaced by its HTML (an interactive plot, made by effattn.report.interactive); the
    plotly bundle is then inlined once in the head, so the page fetches nothing."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    script = ""
    if plots:
        from .interactive import plotly_bundle

        for key, html in plots.items():
            body = body.replace(f"<p>{key}</p>", f"<div class='plot'>{html}</div>")
        script = "<script>" + plotly_bundle().replace("</script", "<\\/script") + "</script>\n"
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>effattn report</title>\n"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}.plot{margin:1em 0}</style>\n" + script + "</head><body>\n" + body + "</body></html>\n"
    )
