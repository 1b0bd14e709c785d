"""Parse the TwiML a Twilio voice webhook returns (the subset the gateway can act on).

Why: to run an existing Twilio voice app unchanged, the gateway POSTs the call to the app's
voice URL like Twilio does and follows the TwiML it answers, chiefly
``<Connect><Stream url>`` with its ``<Parameter>`` children.

How: the document is parsed with :mod:`xml.parsers.expat` directly, building an
:mod:`xml.etree.ElementTree` tree, with defusedxml-style safety: any DOCTYPE, ENTITY or
external entity reference is refused (which rules out entity expansion attacks and external
fetches), and the input is limited to :data:`MAX_TWIML_BYTES`. The root must be
``<Response>``; each child becomes one :data:`Verb`, in document order. Verbs the gateway
does not implement, including unidirectional ``<Start><Stream>``, become
:class:`Unsupported` so the caller can log and skip them.

Errors: :class:`TwimlError` (a ValueError) for oversize, unsafe or malformed XML, a wrong
root, or a supported verb with missing or invalid attributes (where Twilio would fail the
call with an application error).

Pure: no I/O, no logging.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Final, NoReturn
from xml.parsers import expat

__all__ = [
    "MAX_TWIML_BYTES",
    "ConnectStream",
    "Hangup",
    "Pause",
    "Play",
    "Redirect",
    "Reject",
    "Say",
    "TwimlError",
    "Unsupported",
    "Verb",
    "parse_twiml",
]

MAX_TWIML_BYTES: Final = 64 * 1024
"""Largest TwiML document accepted, in bytes (UTF-8 for ``str`` input)."""

_REJECT_REASONS: Final = frozenset({"rejected", "busy"})
_INT_RE: Final = re.compile(r"\s*[0-9]{1,9}\s*")


class TwimlError(ValueError):
    """The TwiML document is unsafe, malformed or not something Twilio would execute."""


@dataclass(frozen=True, slots=True)
class ConnectStream:
    """``<Connect><Stream url>``: a bidirectional Media Stream to ``url`` (ws:// or wss://).

    ``parameters`` are the ``<Parameter name value>`` children (sent as customParameters in
    ``start``). ``action`` is the ``<Connect action>`` URL requested when the stream ends
    (None: continue with the next verb).
    """

    url: str
    name: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    status_callback: str | None = None
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Hangup:
    """``<Hangup/>``: end the call."""


@dataclass(frozen=True, slots=True)
class Reject:
    """``<Reject reason>``: refuse the call without answering (``rejected`` or ``busy``)."""

    reason: str = "rejected"


@dataclass(frozen=True, slots=True)
class Pause:
    """``<Pause length>``: wait ``length`` seconds."""

    length: int = 1


@dataclass(frozen=True, slots=True)
class Play:
    """``<Play loop>url</Play>``: play an audio file ``loop`` times (0: Twilio's "forever")."""

    url: str
    loop: int = 1


@dataclass(frozen=True, slots=True)
class Say:
    """``<Say>text</Say>``: text-to-speech (SSML child elements are flattened to text)."""

    text: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """``<Redirect>url</Redirect>``: fetch new TwiML from ``url`` and continue with it."""

    url: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A verb the gateway does not implement; ``tag`` is its element name."""

    tag: str


Verb = ConnectStream | Hangup | Reject | Pause | Play | Say | Redirect | Unsupported
"""Any parsed TwiML verb."""


# -- safe XML ----------------------------------------------------------------------------


def _refuse(what: str) -> NoReturn:
    raise TwimlError(f"TwiML must not contain {what}")


def _parse_xml(xml: str | bytes) -> ET.Element:
    if isinstance(xml, str):
        data = xml.encode("utf-8")
        # The text is already decoded: override any encoding= in the XML declaration.
        parser = expat.ParserCreate("utf-8")
    else:
        data = bytes(xml)
        parser = expat.ParserCreate()
    if len(data) > MAX_TWIML_BYTES:
        raise TwimlError(f"TwiML larger than {MAX_TWIML_BYTES} bytes ({len(data)} bytes)")

    builder = ET.TreeBuilder()

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        builder.end(tag)

    def doctype(name: str, sysid: str | None, pubid: str | None, internal: int) -> None:
        _refuse("a DOCTYPE declaration")

    def entity_decl(*args: object) -> None:
        _refuse("an ENTITY declaration")

    def external_ref(*args: object) -> int:
        _refuse("an external entity reference")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity_decl
    parser.UnparsedEntityDeclHandler = entity_decl
    parser.ExternalEntityRefHandler = external_ref
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise TwimlError(f"TwiML is not well-formed XML ({exc})") from None
    return builder.close()


# -- verbs -------------------------------------------------------------------------------


def _text(el: ET.Element) -> str:
    return "".join(el.itertext()).strip()


def _int_attr(el: ET.Element, name: str, default: int) -> int:
    raw = el.get(name)
    if raw is None:
        return default
    if not _INT_RE.fullmatch(raw):
        raise TwimlError(f"<{el.tag} {name}> must be a non-negative integer, got {raw!r}")
    return int(raw)


def _required_text(el: ET.Element) -> str:
    text = _text(el)
    if not text:
        raise TwimlError(f"<{el.tag}> requires a URL as its text")
    return text


def _connect(el: ET.Element) -> Verb:
    streams = [child for child in el if child.tag == "Stream"]
    if not streams:
        return Unsupported("Connect")
    if len(streams) > 1:
        raise TwimlError("<Connect> may hold only one <Stream>")
    stream = streams[0]
    url = (stream.get("url") or "").strip()
    if not url:
        raise TwimlError("<Stream> requires a url attribute")
    if not url.lower().startswith(("ws://", "wss://")):
        raise TwimlError(f"<Stream url> must be a ws:// or wss:// URL, got {url!r}")
    parameters: dict[str, str] = {}
    for param in stream:
        if param.tag != "Parameter":
            continue
        name = param.get("name")
        if not name:
            raise TwimlError("<Parameter> requires a name attribute")
        parameters[name] = param.get("value", "")
    return ConnectStream(
        url=url,
        name=stream.get("name"),
        parameters=parameters,
        status_callback=stream.get("statusCallback"),
        action=el.get("action"),
    )


def _reject(el: ET.Element) -> Reject:
    reason = el.get("reason", "rejected")
    if reason not in _REJECT_REASONS:
        raise TwimlError(f"<Reject reason> must be 'rejected' or 'busy', got {reason!r}")
    return Reject(reason)


def _play(el: ET.Element) -> Verb:
    if el.get("digits") is not None and not _text(el):
        return Unsupported("Play")  # <Play digits="..."/> sends DTMF, not audio
    return Play(_required_text(el), _int_attr(el, "loop", 1))


def _verb(el: ET.Element) -> Verb:
    tag = el.tag
    if tag == "Connect":
        return _connect(el)
    if tag == "Hangup":
        return Hangup()
    if tag == "Reject":
        return _reject(el)
    if tag == "Pause":
        return Pause(_int_attr(el, "length", 1))
    if tag == "Play":
        return _play(el)
    if tag == "Say":
        return Say(_text(el))
    if tag == "Redirect":
        return Redirect(_required_text(el))
    return Unsupported(tag)


def parse_twiml(xml: str | bytes) -> list[Verb]:
    """Parse a TwiML ``<Response>`` into its verbs, in document order.

    Raises :class:`TwimlError` if the document is larger than :data:`MAX_TWIML_BYTES`,
    declares a DOCTYPE or entity, is not well-formed, has a root other than ``<Response>``,
    or a supported verb lacks a required attribute or has an invalid one.
    """
    root = _parse_xml(xml)
    if root.tag != "Response":
        raise TwimlError(f"TwiML root must be <Response>, got <{root.tag}>")
    return [_verb(child) for child in root]
