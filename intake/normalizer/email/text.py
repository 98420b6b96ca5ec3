"""Text-level pieces every stage shares: control characters and the private markers of quoted history."""

from __future__ import annotations

import re

CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ue001-\ue003]")

# Markers the converters and the quote stripper share (private-use code points,
# removed from every decoded text first so that a sender cannot forge them).
CUT = "\ue001"  # everything from here on is quoted history
QUOTE_START = "\ue002"  # a quoted region (blockquote, Gmail's quote) ...
QUOTE_END = "\ue003"  # ... ends here


def tidy(text: str) -> str:
    """Trim lines, drop markers, collapse runs of blank lines."""
    text = text.replace(CUT, "").replace(QUOTE_START, "").replace(QUOTE_END, "")
    kept: list[str] = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line.strip():
            kept.append(line)
        elif kept and kept[-1] != "":
            kept.append("")
    return "\n".join(kept).strip()
