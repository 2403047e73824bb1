"""The flat ``<xml><field>value</field>...</xml>`` documents WeChat Pay v2 speaks.

Parsing is strict: no DTDs or entities (a DOCTYPE is refused before expat
sees it, and expat refuses an entity nobody declared), the root must be
``<xml>``, every field must be a plain text element that appears once. Values
lose surrounding whitespace, as WeChat's own SDKs read them.

ElementTree's C parser builds the tree: a notify is parsed on every payment,
and a pure-Python SAX handler (xmltodict, before) cost about a tenth of the
notify path's CPU (BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree.ElementTree import Element, ParseError, XMLParser

# WeChat documents no cap on coupon_count (three fields per coupon) and says
# fields may be added; the 64 KiB body limit is what bounds the work.
MAX_FIELDS = 128


class MalformedXML(ValueError):
    """The body is not a WeChat Pay v2 XML document."""


def _loose(text: str | None) -> bool:
    return bool(text and text.strip())


def parse(body: bytes, root_name: str = "xml") -> dict[str, str]:
    """The fields of a flat document whose root is ``root_name`` (``<root>`` inside a
    refund notify's ``req_info``)."""
    if not body or not body.strip():
        raise MalformedXML("empty body")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise MalformedXML("DTDs are not allowed")
    parser = XMLParser()
    try:
        parser.feed(body)
        root: Element = parser.close()
    except (ParseError, ValueError) as exc:
        raise MalformedXML(f"not XML: {exc}") from None
    if root.tag != root_name:
        raise MalformedXML(f"root element must be <{root_name}>")
    if root.attrib or _loose(root.text):
        if len(root) == 0 and not root.attrib:
            raise MalformedXML(f"<{root_name}> must contain fields")
        raise MalformedXML("attributes and loose text are not allowed")
    if len(root) > MAX_FIELDS:
        raise MalformedXML("too many fields")
    fields: dict[str, str] = {}
    for field in root:
        name = field.tag
        if not isinstance(name, str):  # a comment or processing instruction kept by a tree builder
            continue
        if name in fields:
            raise MalformedXML(f"field {name!r} appears more than once")
        if len(field) or field.attrib:
            raise MalformedXML(f"field {name!r} must be plain text")
        if _loose(field.tail):
            raise MalformedXML("attributes and loose text are not allowed")
        fields[name] = (field.text or "").strip()
    return fields


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: split it across two.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def render(fields: Mapping[str, object]) -> bytes:
    parts = ["<xml>"]
    for name, value in fields.items():
        if not name.isidentifier():
            raise ValueError(f"bad field name {name!r}")
        text = str(value)
        parts.append(f"<{name}>{text if text.isdigit() else _cdata(text)}</{name}>")
    parts.append("</xml>")
    return "".join(parts).encode("utf-8")
