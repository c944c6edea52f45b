"""Names from outside (file and folder names, class names, fields of a stranger's head) are
data: on a terminal they are shown with control characters escaped, so that a name cannot
move the cursor, clear the screen, set the window title (ANSI/OSC sequences), overwrite a
line (carriage return), start a forged line (newline) or reverse the text after it
(bidirectional overrides). Files (CSV, Parquet, JSON) keep names as they are.
"""

from __future__ import annotations

import re

# C0 controls and DEL, C1 controls, Unicode line and paragraph separators, the
# bidirectional embeddings, overrides and isolates, and lone surrogates (no terminal can
# be sent those)
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """`text` as one line that shows every character it holds: a control character becomes
    its escape (\\n, \\x1b, \\u202e)."""
    return _CONTROLS.sub(_escape, text)


def said_by(error: BaseException, limit: int = 300, keep: str = "end") -> str:
    """What a library's error says, on one line of at most `limit` characters: its end,
    where ONNX Runtime and the converters say what failed (keep="start" for its start),
    else the error's type name."""
    said = " ".join(str(error).split())
    return (said[-limit:] if keep == "end" else said[:limit]) or type(error).__name__


def _escape(match: re.Match) -> str:
    character = match.group()
    if character in _NAMED:
        return _NAMED[character]
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shortened(name: str, limit: int = 60) -> str:
    """`name`, cut to `limit` characters with an ellipsis: a name from outside may be long
    enough to fill a screen or a picture."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


def listed(names: list[str], shown: int = 10) -> str:
    """Up to `shown` names, each shortened, and how many more there are."""
    text = ", ".join(shortened(name) for name in names[:shown])
    return text + (f" … and {len(names) - shown} more" if len(names) > shown else "")
