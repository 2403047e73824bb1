"""The flat ``<xml><field>value</field>...</xml>`` documents WeChat Pay v2 speaks.

Parsing is strict: no DTDs or entities (xmltodict refuses entities by default;
a DOCTYPE is refused before expat sees it), the root must be ``<xml>``, every
field must be a plain text element that appears once.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.parsers.expat import ExpatError

import xmltodict

# WeChat documents no cap on coupon_count (three fields per coupon) and says
# fields may be added; the 64 KiB body limit is what bounds the work.
MAX_FIELDS = 128


class MalformedXML(ValueError):
    """The body is not a WeChat Pay v2 XML document."""


def parse(body: bytes, root_name: str = "xml") -> dict[str, str]:
    """The fields of a flat document whose root is ``root_name`` (``<root>`` inside a
    refund notify's ``req_info``)."""
    if not body or not body.strip():
        raise MalformedXML("empty body")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise MalformedXML("DTDs are not allowed")
    try:
        doc = xmltodict.parse(body, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise MalformedXML(f"not XML: {exc}") from None
    root = doc.get(root_name) if isinstance(doc, dict) else None
    if len(doc) != 1 or root_name not in doc:
        raise MalformedXML(f"root element must be <{root_name}>")
    if root is None:
        return {}
    if not isinstance(root, dict):
        raise MalformedXML(f"<{root_name}> must contain fields")
    if len(root) > MAX_FIELDS:
        raise MalformedXML("too many fields")
    fields: dict[str, str] = {}
    for name, value in root.items():
        if name.startswith("@") or name == "#text":
            raise MalformedXML("attributes and loose text are not allowed")
        if isinstance(value, list):
            raise MalformedXML(f"field {name!r} appears more than once")
        if isinstance(value, dict):
            raise MalformedXML(f"field {name!r} must be plain text")
        fields[name] = value or ""
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
