"""Reasons from foreign exception texts, made fit for a result row.

Decoders (Pillow, pydicom and its plugins, DALI) word their failures freely: Pillow names
the file by its absolute path (so ``top_error_reasons`` would count one reason per file), a
pydicom value error quotes the offending header value (a patient's name in a numeric tag is
PHI, and reasons are written without ``--include-phi``), and pydicom's plugin failures put
the cause on the lines after the first. :func:`exception_reason` keeps every line, drops
paths and quoted values, and bounds the length.
"""
from __future__ import annotations

import re

#: Longest reason a row carries.
MAX_REASON = 300

_QUOTED = re.compile(r"""'[^'\n]*'|"[^"\n]*"|b'[^'\n]*'""")
_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\":;,()]+/)*[^\s'\":;,()]*")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """``text`` on one line, with quoted values shown as ``'…'`` and file paths as ``<file>``."""
    lines = [_SPACES.sub(" ", line).strip() for line in str(text).splitlines()]
    text = ""
    for line in filter(None, lines):
        text += (" " if not text or text.endswith(":") else "; ") + line
    text = text.strip()
    text = _QUOTED.sub("'…'", text)
    text = _PATH.sub("<file>", text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def exception_reason(exc: BaseException, limit: int = MAX_REASON) -> str:
    """``TypeName: cleaned message`` (the message on one line, every cause kept)."""
    text = clean_text(str(exc))
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
