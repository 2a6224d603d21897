"""An operator's passthrough notes (Markdown) as HTML that is safe to show in the admin.

Markdown lets raw HTML through, so the rendered HTML is sanitised with an allowlist
(nh3): scripts and styles go with their content, event handlers and `javascript:` links
go, and remote images are not loaded in an operator's browser.
"""

from __future__ import annotations

import markdown
import nh3

_TAGS = nh3.ALLOWED_TAGS - {"img", "area", "map"}
_DROPPED_WITH_CONTENT = {"script", "style"}
_URL_SCHEMES = {"http", "https", "mailto"}


def render_notes(text: str) -> str:
    """`text` (Markdown) as sanitised HTML; "" for no notes."""
    if not text.strip():
        return ""
    html = markdown.markdown(text, extensions=["fenced_code", "tables"], output_format="html")
    return nh3.clean(
        html,
        tags=_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
