"""Parse the TwiML a Twilio voice webhook returns (the subset the gateway can act on).

Why: to run an existing Twilio voice app unchanged, the gateway POSTs the call to the app's
voice URL like Twilio does and follows the TwiML it answers, chiefly
``<Connect><Stream url>`` with its ``<Parameter>`` children.

How: the document is parsed with :mod:`xml.parsers.expat` directly, building an
:mod:`xml.etree.ElementTree` tree, with defusedxml-style safety: any DOCTYPE, ENTITY or
external entity reference is refused (which rules out entity expansion attacks and external
fetches), and the input is limited to :data:`MAX_TWIML_BYTES`. The root must be
``<Response>``; each child becomes one :data:`Verb`, in document order: ``<Say>``,
``<Play>``, ``<Pause>``, ``<Gather>`` (with nested ``<Say>``/``<Play>``/``<Pause>``),
``<Record>``, ``<Dial>`` (a number, ``<Number>``, ``<Sip>``), ``<Connect><Stream>``,
``<Start><Stream>``, ``<Stop><Stream>``, ``<Redirect>``, ``<Hangup>``, ``<Reject>``.
Verbs the gateway does not implement become :class:`Unsupported` so the executor
(:mod:`audiosocket_gw.twilio.twiml_exec`) can log and skip them. docs/TWIML.md lists
every attribute.

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

from ..dial import DialTarget

__all__ = [
    "MAX_TWIML_BYTES",
    "ConnectStream",
    "Dial",
    "Gather",
    "Hangup",
    "Pause",
    "Play",
    "PlayDigits",
    "Redirect",
    "Record",
    "Reject",
    "Say",
    "StartStream",
    "StopStream",
    "TwimlError",
    "Unsupported",
    "Verb",
    "parse_twiml",
]

MAX_TWIML_BYTES: Final = 64 * 1024
"""Largest TwiML document accepted, in bytes (UTF-8 for ``str`` input)."""

_REJECT_REASONS: Final = frozenset({"rejected", "busy"})
_INT_RE: Final = re.compile(r"\s*[0-9]{1,9}\s*")
_METHODS: Final = frozenset({"GET", "POST"})
_KEYS_RE: Final = re.compile(r"[0-9*#]*")
_TRACKS: Final = frozenset({"inbound_track", "outbound_track", "both_tracks"})
_NUMBER_RE: Final = re.compile(r"\+?[0-9*#]{1,32}")
_SIP_RE: Final = re.compile(r"sips?:[^\s\"'<>,;&]{1,200}(;[^\s\"'<>,&]{0,200})?", re.IGNORECASE)
_DIAL_RECORD: Final = frozenset({
    "do-not-record", "record-from-answer", "record-from-ringing",
    "record-from-answer-dual", "record-from-ringing-dual", "true", "false"})


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
    method: str = "POST"
    status_callback_method: str = "POST"


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
class PlayDigits:
    """``<Play digits="...">``: DTMF toward the caller's peer (``w`` = 0.5 s pause),
    through AMI ``PlayDTMF`` (never 0x03 frames toward Asterisk)."""

    digits: str


@dataclass(frozen=True, slots=True)
class Say:
    """``<Say voice language loop>text</Say>``: text-to-speech (SSML child elements are
    flattened to text). ``loop`` 0 is Twilio's "until the call ends" (capped)."""

    text: str
    voice: str = ""
    language: str = ""
    loop: int = 1


@dataclass(frozen=True, slots=True)
class Redirect:
    """``<Redirect method>url</Redirect>``: fetch new TwiML from ``url`` and continue."""

    url: str
    method: str = "POST"


Prompt = Say | Play | Pause
"""What ``<Gather>`` may nest (played while gathering)."""


@dataclass(frozen=True, slots=True)
class Gather:
    """``<Gather>``: collect DTMF digits and/or speech, then request ``action``.

    ``input`` holds ``"dtmf"`` and/or ``"speech"``. ``num_digits`` None: no fixed
    count. ``finish_on_key`` ``""``: none. ``timeout`` seconds of no input after the
    prompts (and between digits) end the gather. ``speech_timeout`` None is ``auto``.
    ``action`` None: the current document's URL (Twilio's default).
    """

    input: frozenset[str] = frozenset({"dtmf"})
    num_digits: int | None = None
    finish_on_key: str = "#"
    timeout: int = 5
    speech_timeout: int | None = None
    action: str | None = None
    method: str = "POST"
    action_on_empty_result: bool = False
    language: str = "en-US"
    prompts: tuple[Prompt, ...] = ()


@dataclass(frozen=True, slots=True)
class Record:
    """``<Record>``: record the caller until silence, a key, ``max_length`` or hang-up."""

    action: str | None = None
    method: str = "POST"
    timeout: int = 5
    finish_on_key: str = "1234567890*#"
    max_length: int = 3600
    play_beep: bool = True
    trim: bool = True
    recording_status_callback: str | None = None
    recording_status_callback_method: str = "POST"
    transcribe: bool = False
    transcribe_callback: str | None = None


@dataclass(frozen=True, slots=True)
class Dial:
    """``<Dial>``: connect the caller to ``targets`` (rung at once); see ``dial.py``."""

    targets: tuple[DialTarget, ...]
    action: str | None = None
    method: str = "POST"
    timeout: int = 30
    caller_id: str = ""
    record: bool = False
    hangup_on_star: bool = False
    time_limit: int = 14400


@dataclass(frozen=True, slots=True)
class StartStream:
    """``<Start><Stream>``: fork the call's audio one way to ``url`` while TwiML goes on."""

    url: str
    name: str | None = None
    track: str = "inbound_track"
    parameters: dict[str, str] = field(default_factory=dict)
    status_callback: str | None = None
    status_callback_method: str = "POST"


@dataclass(frozen=True, slots=True)
class StopStream:
    """``<Stop><Stream name>``: stop the fork called ``name`` (None: every fork)."""

    name: str | None = None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A verb the gateway does not implement; ``tag`` is its element name."""

    tag: str


Verb = (ConnectStream | Hangup | Reject | Pause | Play | PlayDigits | Say | Redirect | Gather
        | Record | Dial | StartStream | StopStream | Unsupported)
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


def _method(el: ET.Element, name: str = "method") -> str:
    raw = (el.get(name) or "POST").strip().upper()
    if raw not in _METHODS:
        raise TwimlError(f"<{el.tag} {name}> must be GET or POST, got {raw!r}")
    return raw


def _bool_attr(el: ET.Element, name: str, default: bool) -> bool:
    raw = el.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise TwimlError(f"<{el.tag} {name}> must be true or false, got {raw!r}")
    return value == "true"


def _keys_attr(el: ET.Element, name: str, default: str) -> str:
    raw = el.get(name)
    if raw is None:
        return default
    value = raw.strip()
    if not _KEYS_RE.fullmatch(value):
        raise TwimlError(f"<{el.tag} {name}> must be made of 0-9 * #, got {raw!r}")
    return value


def _opt(el: ET.Element, name: str) -> str | None:
    raw = el.get(name)
    if raw is None:
        return None
    return raw.strip() or None


def _stream_parts(stream: ET.Element) -> tuple[str, dict[str, str]]:
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
    return url, parameters


def _connect(el: ET.Element) -> Verb:
    streams = [child for child in el if child.tag == "Stream"]
    if not streams:
        return Unsupported("Connect")
    if len(streams) > 1:
        raise TwimlError("<Connect> may hold only one <Stream>")
    stream = streams[0]
    url, parameters = _stream_parts(stream)
    return ConnectStream(
        url=url,
        name=stream.get("name"),
        parameters=parameters,
        status_callback=_opt(stream, "statusCallback"),
        action=_opt(el, "action"),
        method=_method(el),
        status_callback_method=_method(stream, "statusCallbackMethod"),
    )


def _start(el: ET.Element) -> Verb:
    streams = [child for child in el if child.tag == "Stream"]
    if len(streams) != 1 or len(el) != 1:
        return Unsupported("Start")  # <Siprec>, <Transcription>, several nouns
    stream = streams[0]
    url, parameters = _stream_parts(stream)
    track = (stream.get("track") or "inbound_track").strip()
    if track not in _TRACKS:
        raise TwimlError(f"<Stream track> must be one of {', '.join(sorted(_TRACKS))}, "
                         f"got {track!r}")
    return StartStream(
        url=url,
        name=_opt(stream, "name"),
        track=track,
        parameters=parameters,
        status_callback=_opt(stream, "statusCallback"),
        status_callback_method=_method(stream, "statusCallbackMethod"),
    )


def _stop(el: ET.Element) -> Verb:
    streams = [child for child in el if child.tag == "Stream"]
    if len(streams) != 1 or len(el) != 1:
        return Unsupported("Stop")
    return StopStream(_opt(streams[0], "name"))


def _say(el: ET.Element) -> Say:
    return Say(_text(el), voice=(el.get("voice") or "").strip(),
               language=(el.get("language") or "").strip(), loop=_int_attr(el, "loop", 1))


def _gather(el: ET.Element) -> Gather:
    raw_input = (el.get("input") or "dtmf").replace(",", " ").split()
    inputs = frozenset(raw_input)
    if not inputs or not inputs <= {"dtmf", "speech"}:
        raise TwimlError(f"<Gather input> must be dtmf, speech or both, got {el.get('input')!r}")
    num = el.get("numDigits")
    num_digits = _int_attr(el, "numDigits", 0) if num is not None else None
    if num_digits == 0:
        raise TwimlError("<Gather numDigits> must be at least 1")
    st = (el.get("speechTimeout") or "auto").strip()
    speech_timeout = None if st == "auto" else _int_attr(el, "speechTimeout", 0)
    prompts: list[Prompt] = []
    for child in el:
        verb = _verb(child)
        if not isinstance(verb, Say | Play | Pause):
            raise TwimlError(f"<Gather> may nest only <Say>, <Play> and <Pause>, not <{child.tag}>")
        prompts.append(verb)
    return Gather(
        input=inputs,
        num_digits=num_digits,
        finish_on_key=_keys_attr(el, "finishOnKey", "#")[:1],
        timeout=_int_attr(el, "timeout", 5),
        speech_timeout=speech_timeout,
        action=_opt(el, "action"),
        method=_method(el),
        action_on_empty_result=_bool_attr(el, "actionOnEmptyResult", False),
        language=(el.get("language") or "en-US").strip(),
        prompts=tuple(prompts),
    )


def _record(el: ET.Element) -> Record:
    max_length = _int_attr(el, "maxLength", 3600)
    if max_length == 0:
        raise TwimlError("<Record maxLength> must be at least 1")
    trim = (el.get("trim") or "trim-silence").strip()
    if trim not in ("trim-silence", "do-not-trim"):
        raise TwimlError(f"<Record trim> must be trim-silence or do-not-trim, got {trim!r}")
    return Record(
        action=_opt(el, "action"),
        method=_method(el),
        timeout=_int_attr(el, "timeout", 5),
        finish_on_key=_keys_attr(el, "finishOnKey", "1234567890*#"),
        max_length=max_length,
        play_beep=_bool_attr(el, "playBeep", True),
        trim=trim == "trim-silence",
        recording_status_callback=_opt(el, "recordingStatusCallback"),
        recording_status_callback_method=_method(el, "recordingStatusCallbackMethod"),
        transcribe=_bool_attr(el, "transcribe", False),
        transcribe_callback=_opt(el, "transcribeCallback"),
    )


def _number(text: str, tag: str) -> str:
    number = re.sub(r"[\s().-]", "", text)
    if not _NUMBER_RE.fullmatch(number):
        raise TwimlError(f"<{tag}> must hold a phone number, got {text!r}")
    return number


def _dial(el: ET.Element) -> Verb:
    if any(child.tag not in ("Number", "Sip") for child in el):
        return Unsupported("Dial")  # <Client>, <Conference>, <Queue>, <Sim>, <Application>
    targets: list[DialTarget] = []
    for child in el:
        if child.tag == "Number":
            targets.append(DialTarget("number", _number(_text(child), "Number"),
                                       send_digits=_dial_digits(child)))
        elif child.tag == "Sip":
            uri = _text(child)
            if not _SIP_RE.fullmatch(uri):
                raise TwimlError(f"<Sip> must hold a sip: or sips: URI, got {uri!r}")
            targets.append(DialTarget("sip", uri))
    text = (el.text or "").strip()
    if text:
        if targets:
            raise TwimlError("<Dial> holds either a number as text or nouns, not both")
        targets.append(DialTarget("number", _number(text, "Dial")))
    if not targets:
        raise TwimlError("<Dial> requires a number, a <Number> or a <Sip>")
    record = (el.get("record") or "do-not-record").strip()
    if record not in _DIAL_RECORD:
        raise TwimlError(f"<Dial record> {record!r} is not a Twilio value")
    caller_id = (el.get("callerId") or "").strip()
    if caller_id and not (_NUMBER_RE.fullmatch(caller_id) or re.fullmatch(
            r"client:[A-Za-z0-9_.-]{1,64}|[A-Za-z0-9_.+-]{1,64}", caller_id)):
        raise TwimlError(f"<Dial callerId> {caller_id!r} is not a number or a name")
    timeout = _int_attr(el, "timeout", 30)
    return Dial(
        targets=tuple(targets),
        action=_opt(el, "action"),
        method=_method(el),
        timeout=min(max(timeout, 5), 600),
        caller_id=caller_id,
        record=record not in ("do-not-record", "false"),
        hangup_on_star=_bool_attr(el, "hangupOnStar", False),
        time_limit=_int_attr(el, "timeLimit", 14400) or 14400,
    )


def _dial_digits(el: ET.Element) -> str:
    raw = (el.get("sendDigits") or "").strip()
    if raw and not re.fullmatch(r"[0-9*#wW]{1,64}", raw):
        raise TwimlError(f"<Number sendDigits> must be made of 0-9 * # w, got {raw!r}")
    return raw


def _reject(el: ET.Element) -> Reject:
    reason = el.get("reason", "rejected")
    if reason not in _REJECT_REASONS:
        raise TwimlError(f"<Reject reason> must be 'rejected' or 'busy', got {reason!r}")
    return Reject(reason)


def _play(el: ET.Element) -> Verb:
    digits = el.get("digits")
    if digits is not None and not _text(el):  # <Play digits="..."/> sends DTMF, not audio
        digits = digits.strip()
        if not re.fullmatch(r"[0-9*#wW]{1,64}", digits):
            raise TwimlError(f"<Play digits> must be made of 0-9 * # w, got {digits!r}")
        return PlayDigits(digits)
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
        return _say(el)
    if tag == "Redirect":
        return Redirect(_required_text(el), _method(el))
    if tag == "Gather":
        return _gather(el)
    if tag == "Record":
        return _record(el)
    if tag == "Dial":
        return _dial(el)
    if tag == "Start":
        return _start(el)
    if tag == "Stop":
        return _stop(el)
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
