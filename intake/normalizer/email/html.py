"""HTML bodies to readable text with the standard library, marking where clients put quoted history.

Why not inscriptis: put in this converter's place it read the public corpus as
well (most of it offers plain text), but failed 3 of the HTML tests of
tests/test_email_normalizer.py: it indents paragraphs and joins Outlook's
MsoNormal lines differently, and it cannot mark blockquotes, Gmail's and
Outlook's quote containers, so an answer written below a quote is lost with it.
It would also bring lxml in as a dependency.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser

from intake.normalizer.email.text import CONTROLS, CUT, QUOTE_END, QUOTE_START

_BLOCK_TAGS = frozenset(
    "address article aside blockquote center dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody thead tfoot tr ul".split()
)
# Blocks a browser sets apart with a margin: a blank line before and after.
_SPACED_TAGS = frozenset("h1 h2 h3 h4 h5 h6 ol pre table ul".split())
_SKIPPED_TAGS = frozenset({"script", "style", "title", "xml", "template", "head"})
_VOID_TAGS = frozenset({"br", "hr", "img", "meta", "link", "input", "wbr", "col", "area", "base", "source"})


@dataclass
class _Region:
    """A quoted region of an HTML body: it ends when its element closes."""

    tag: str
    depth: int = 1  # open elements of this tag since the region began


class _HtmlText(HTMLParser):
    """HTML body to readable text with the standard library: block elements keep their line breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0
        self.regions: list[_Region] = []  # open quoted regions, innermost last
        self.cids: set[str] = set()
        # Outlook writes a blank line as <p class=MsoNormal><o:p>&nbsp;</o:p></p>
        # and a paragraph without margins as MsoNormal; other <p>s have a margin.
        self.paragraph: tuple[bool, bool] | None = None  # (Outlook's margin-less paragraph, nothing written yet)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: (value or "") for name, value in attrs}
        if tag == "body":
            self.skip_depth = 0  # a head that was never closed ends here
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag == "img":
            source = values.get("src", "").strip()
            if source.lower().startswith("cid:"):
                self.cids.add(urllib.parse.unquote(source[4:]).strip("<>"))
            return
        for region in self.regions:
            if region.tag == tag:
                region.depth += 1
        if tag == "br":
            self.out.append("\n")
        elif tag in _SPACED_TAGS:
            self._blank_line()
        elif tag in _BLOCK_TAGS:
            self._line()
        if tag == "p":
            outlook = "msonormal" in values.get("class", "").lower()
            self.paragraph = (outlook, True)
            if outlook:
                self._line()
            else:
                self._blank_line()
        if tag == "li":
            self.out.append("- ")
        elif tag == "pre":
            self.pre_depth += 1
        elif tag in ("td", "th"):
            self.out.append(" ")
        marker = _quote_marker(tag, values)
        if marker == QUOTE_START and tag not in _VOID_TAGS:
            self.regions.append(_Region(tag))
            self.out.append(f"\n{QUOTE_START}\n")
        elif marker == CUT:
            self.out.append(f"\n{CUT}\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
        if tag in _SPACED_TAGS:
            self._blank_line()
        elif tag in _BLOCK_TAGS:
            self._line()
        if tag == "p" and self.paragraph is not None:
            outlook, empty = self.paragraph
            if empty:
                self.out.append("\n")
            elif not outlook:
                self._blank_line()
            self.paragraph = None
        for region in self.regions:
            if region.tag == tag:
                region.depth -= 1
        while self.regions and self.regions[-1].depth <= 0:
            self.regions.pop()
            self.out.append(f"\n{QUOTE_END}\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        data = CONTROLS.sub("", data.replace("\r\n", "\n")).replace("\xa0", " ")
        if not self.pre_depth:
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1].endswith("\n"):
                # Source indentation between blocks is not text a person wrote.
                data = data.lstrip(" ")
        if data:
            self.out.append(data)
            if self.paragraph is not None and data.strip():
                self.paragraph = (self.paragraph[0], False)

    def _line(self) -> None:
        if self.out and not self.out[-1].endswith("\n"):
            self.out.append("\n")

    def _blank_line(self) -> None:
        self._line()
        if self.out and not "".join(self.out[-2:]).endswith("\n\n"):
            self.out.append("\n")

    def text(self) -> str:
        self.out.extend(f"\n{QUOTE_END}\n" for _region in self.regions)
        self.regions = []
        return "".join(self.out)


def _quote_marker(tag: str, attributes: dict[str, str]) -> str | None:
    """Is this element where a client put the quoted history of a reply?"""
    classes = attributes.get("class", "").lower().split()
    element_id = attributes.get("id", "").lower()
    if tag == "blockquote" or "gmail_quote" in classes or "yahoo_quoted" in classes or "protonmail_quote" in classes:
        return QUOTE_START
    if element_id in ("divrplyfwdmsg", "appendonsend") or "moz-cite-prefix" in classes or "zmail_extra" in classes:
        return CUT  # the header of a quoted message; the quoted body follows as siblings
    style = attributes.get("style", "").lower().replace(" ", "")
    if tag == "div" and ("border-top:solid#e1e1e1" in style or "border-top:solid#b5c4df" in style):
        return CUT  # Outlook desktop's separator above "From: ... Sent: ..."
    return None


def html_to_text(html: str) -> tuple[str, set[str]]:
    parser = _HtmlText()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser gives up on some broken markup; what it read so far is kept.
        pass
    return parser.text(), parser.cids


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def html_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data[:8192])
    return match.group(1).decode("ascii") if match else None
