"""JSON read from files that may come from someone else (head.json, model.json, a store's
summary and fingerprints, reports): any text gives a value or a ValueError with a reason,
never another exception (deep nesting is a RecursionError in the json module, a huge
integer a ValueError with advice meant for programmers)."""

from __future__ import annotations

import json
from typing import Any


def parse_json(text: str | bytes) -> Any:
    """The value `text` holds; a ValueError saying why it is not JSON headstart reads."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except ValueError as error:
        if "int_max_str_digits" in str(error) or "4300 digits" in str(error):
            raise ValueError("a number with thousands of digits") from None
        raise
