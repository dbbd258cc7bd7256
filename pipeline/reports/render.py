"""Rendering of the reports from the Jinja2 templates in `templates/`.

HTML templates (`*.html.j2`) are autoescaped; Markdown templates (`*.md.j2`) are not, and
escape what they show with the `md` filter instead.
"""

from __future__ import annotations

import functools
import html
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_eval_context, select_autoescape
from jinja2.nodes import EvalContext
from markupsafe import Markup


def render(template: str, **context: Any) -> str:
    """`template` (a file name under templates/) rendered with `context`."""
    return _environment().get_template(template).render(**context)


def markdown_text(value: object) -> str:
    """A recorded string fit for a Markdown table cell or heading."""
    # Markdown passes raw HTML through, so recorded text is entity-escaped like in the HTML
    # pages; pipes and line breaks would break a table row.
    escaped = html.escape(str(value), quote=False).replace("|", "\\|")
    return " ".join(escaped.split())


@pass_eval_context
def _finalize(context: EvalContext, value: object) -> object:
    # Autoescaped output spells quotes as html.escape does (&quot;, not markupsafe's &#34;),
    # so pages read the same byte for byte as before the templates. Markup (a macro's
    # output) is already safe.
    if context.autoescape and not isinstance(value, Markup):
        return Markup(html.escape(str(value)))
    return value


@functools.cache
def _environment() -> Environment:
    # Built on first use, not at import: importing a module has no side effects.
    environment = Environment(
        loader=PackageLoader("pipeline.reports", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["md"] = markdown_text
    return environment
