"""Driving the complaint form over plain HTTP, as a browser without JavaScript would, and reading its pages."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import aiohttp

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())


class Page(HTMLParser):
    """A served page, parsed: every element with its attributes and text, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.parts.append(data)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag) and all(e.attrs.get(name.rstrip("_").replace("_", "-")) == value for name, value in attrs.items())
        ]

    def by_id(self, ident: str) -> Element:
        [element] = [e for e in self.elements if e.attrs.get("id") == ident]
        return element

    def value(self, name: str) -> str:
        [element] = [e for e in self.elements if e.attrs.get("name") == name and e.tag in ("input", "textarea")]
        if element.tag == "textarea":
            return "".join(element.parts).removeprefix("\n")
        return element.attrs.get("value", "")

    @property
    def root(self) -> Element:
        return self.find_all("html")[0]


def png(width: int = 2, height: int = 2) -> bytes:
    """A real, tiny PNG image (what a customer's photo looks like to the type check)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xcc\x22\x22" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def valid_fields(**overrides: str) -> dict[str, str]:
    fields = {
        "name": "Ewa Nowak",
        "email": "ewa@example.com",
        "phone": "+48 601 234 567",
        "preferred_contact": "email",
        "product": "Courier delivery, order 1001",
        "occurred_on": "2024-03-17",
        "description": "The parcel arrived with a broken lid.",
        "desired_outcome": "A replacement",
        "consent": "yes",
    }
    fields.update(overrides)
    return {name: value for name, value in fields.items() if value is not None}


class FormClient:
    """One visitor: a cookie jar, the form it was served last, and what it sends back."""

    def __init__(self, base: str, *, headers: dict[str, str] | None = None) -> None:
        self.base = base
        # unsafe=True: aiohttp's jar otherwise drops cookies set by a bare IP address such as 127.0.0.1.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers or {})
        self.form: Page | None = None

    async def __aenter__(self) -> "FormClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def open(self, query: str = "", **headers: str) -> tuple[aiohttp.ClientResponse, Page]:
        async with self.session.get(f"{self.base}/complaint{query}", headers=headers) as response:
            page = Page(await response.text())
        self.form = page
        return response, page

    def hidden(self) -> dict[str, str]:
        assert self.form is not None, "open the form first"
        return {name: self.form.value(name) for name in ("csrf_token", "submission_id")}

    async def send(
        self,
        fields: dict[str, str],
        *,
        files: list[tuple[str, bytes, str]] = (),  # type: ignore[assignment]
        hidden: dict[str, str] | None = None,
        query: str = "?lang=en",
        headers: dict[str, str] | None = None,
    ) -> tuple[aiohttp.ClientResponse, Page]:
        # quote_fields=False: names and file names as browsers send them, raw UTF-8 rather than percent-encoded.
        form = aiohttp.FormData(quote_fields=False)
        for name, value in {**(self.hidden() if hidden is None else hidden), **fields}.items():
            form.add_field(name, value)
        for filename, data, content_type in files:
            form.add_field("attachments", data, filename=filename, content_type=content_type)
        async with self.session.post(f"{self.base}/complaint{query}", data=form, headers=headers or {}) as response:
            page = Page(await response.text())
        if "csrf_token" in page.html:
            self.form = page
        return response, page


    async def send_raw(self, content_type: str, body: bytes, *, query: str = "?lang=en") -> tuple[aiohttp.ClientResponse, Page]:
        """POST bytes made by hand (a broken multipart, say) with this visitor's cookie."""
        async with self.session.post(f"{self.base}/complaint{query}", data=body, headers={"Content-Type": content_type}) as response:
            page = Page(await response.text())
        return response, page


def cookie_attributes(response: aiohttp.ClientResponse) -> dict[str, Any]:
    [header] = response.headers.getall("Set-Cookie")
    name = header.split("=", 1)[0]
    attributes = {part.strip().split("=", 1)[0].lower(): part.strip().lower() for part in header.split(";")[1:]}
    return {"name": name, **attributes}
