"""Tests for TwiML parsing, with documents shaped like Twilio's documentation examples."""

from __future__ import annotations

import pytest

from audiosocket_gw.twilio.twiml import (
    MAX_TWIML_BYTES,
    ConnectStream,
    Hangup,
    Pause,
    Play,
    Redirect,
    Reject,
    Say,
    TwimlError,
    Unsupported,
    parse_twiml,
)

UNREACHABLE = (
    "This TwiML instruction is unreachable unless the Stream is ended by your WebSocket server."
)

# <Connect><Stream> example from Twilio's "TwiML Voice: <Stream>" page.
CONNECT_STREAM = f"""<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="wss://example.com/audiostream">
      <Parameter name="aCustomParameter" value="aCustomValue that was set in TwiML" />
    </Stream>
  </Connect>
  <Say>{UNREACHABLE}</Say>
</Response>
"""

# What a typical AI-voice app (OpenAI Realtime + Twilio tutorial) returns.
AI_APP = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
    <Say voice="Google.en-US-Chirp3-HD-Aoede">Please wait while we connect your call.</Say>
    <Pause length="1"/>
    <Say>O.K. you can start talking!</Say>
    <Connect action="https://myapp.example/after-stream" method="POST">
        <Stream url="wss://myapp.example/media-stream" name="ai-stream"
                statusCallback="https://myapp.example/stream-status" statusCallbackMethod="POST">
            <Parameter name="From" value="+15017122661"/>
            <Parameter name="CallerName" value="Ada &amp; co"/>
        </Stream>
    </Connect>
</Response>
"""

# Unidirectional stream example from the same page.
START_STREAM = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
    <Start>
        <Stream url="wss://mystream.ngrok.io/audiostream" />
    </Start>
    <Say>The stream has started.</Say>
</Response>
"""


def test_connect_stream_doc_example():
    assert parse_twiml(CONNECT_STREAM) == [
        ConnectStream(
            url="wss://example.com/audiostream",
            name=None,
            parameters={"aCustomParameter": "aCustomValue that was set in TwiML"},
            status_callback=None,
        ),
        Say(UNREACHABLE),
    ]


def test_ai_app_twiml_bytes():
    verbs = parse_twiml(AI_APP.encode("utf-8"))
    assert verbs == [
        Say("Please wait while we connect your call."),
        Pause(1),
        Say("O.K. you can start talking!"),
        ConnectStream(
            url="wss://myapp.example/media-stream",
            name="ai-stream",
            parameters={"From": "+15017122661", "CallerName": "Ada & co"},
            status_callback="https://myapp.example/stream-status",
            action="https://myapp.example/after-stream",
        ),
    ]


def test_start_stream_is_unsupported():
    assert parse_twiml(START_STREAM) == [Unsupported("Start"), Say("The stream has started.")]


def test_simple_verbs():
    xml = """<Response>
        <Play loop="2">https://api.twilio.com/cowbell.mp3</Play>
        <Play>https://example.com/hello.wav</Play>
        <Play digits="wwww3"/>
        <Pause length="5"/>
        <Pause/>
        <Say language="fr-FR">Bonjour <emphasis>à tous</emphasis>!</Say>
        <Say><![CDATA[1 < 2 & 3]]></Say>
        <Redirect method="POST">https://example.com/next</Redirect>
        <Gather input="speech" action="/gather"><Say>Hi</Say></Gather>
        <Dial>+15551234567</Dial>
        <Connect><Room>DailyStandup</Room></Connect>
        <Reject reason="busy"/>
        <Reject/>
        <Hangup/>
    </Response>"""
    assert parse_twiml(xml) == [
        Play("https://api.twilio.com/cowbell.mp3", 2),
        Play("https://example.com/hello.wav", 1),
        Unsupported("Play"),
        Pause(5),
        Pause(1),
        Say("Bonjour à tous!"),
        Say("1 < 2 & 3"),
        Redirect("https://example.com/next"),
        Unsupported("Gather"),
        Unsupported("Dial"),
        Unsupported("Connect"),
        Reject("busy"),
        Reject("rejected"),
        Hangup(),
    ]


def test_empty_response_and_comments():
    assert parse_twiml("<Response/>") == []
    assert parse_twiml("<?xml version='1.0'?><!-- hi --><Response><!-- x --></Response>") == []


def test_str_with_foreign_encoding_declaration():
    # A str is already decoded: the declared encoding must not re-decode it.
    xml = '<?xml version="1.0" encoding="ISO-8859-1"?><Response><Say>café</Say></Response>'
    assert parse_twiml(xml) == [Say("café")]
    assert parse_twiml(xml.encode("latin-1")) == [Say("café")]


@pytest.mark.parametrize(
    ("xml", "match"),
    [
        ("<Respons/>", "root must be <Response>"),
        ("<response/>", "root must be <Response>"),
        ("", "not well-formed"),
        ("<Response>", "not well-formed"),
        ("<Response><Say>x</Response>", "not well-formed"),
        ("just text", "not well-formed"),
        ("<Response><Connect><Stream/></Connect></Response>", "requires a url"),
        ('<Response><Connect><Stream url=" "/></Connect></Response>', "requires a url"),
        (
            '<Response><Connect><Stream url="https://x/y"/></Connect></Response>',
            "ws:// or wss://",
        ),
        (
            '<Response><Connect><Stream url="wss://a"/><Stream url="wss://b"/></Connect>'
            "</Response>",
            "only one <Stream>",
        ),
        (
            '<Response><Connect><Stream url="wss://a"><Parameter value="v"/></Stream>'
            "</Connect></Response>",
            "<Parameter> requires a name",
        ),
        ('<Response><Pause length="-1"/></Response>', "non-negative integer"),
        ('<Response><Pause length="1.5"/></Response>', "non-negative integer"),
        ('<Response><Play loop="x">u</Play></Response>', "non-negative integer"),
        ("<Response><Play/></Response>", "requires a URL"),
        ("<Response><Redirect> </Redirect></Response>", "requires a URL"),
        ('<Response><Reject reason="nope"/></Response>', "'rejected' or 'busy'"),
    ],
)
def test_invalid(xml, match):
    with pytest.raises(TwimlError, match=match):
        parse_twiml(xml)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<Response><Say>&lol3;</Say></Response>"""

EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE Response [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Response><Say>&xxe;</Say></Response>"""


@pytest.mark.parametrize(
    "xml",
    [
        BILLION_LAUGHS,
        EXTERNAL,
        '<!DOCTYPE Response SYSTEM "http://example.com/twiml.dtd"><Response/>',
        "<!DOCTYPE Response><Response/>",
    ],
)
def test_doctype_and_entities_refused(xml):
    with pytest.raises(TwimlError, match="must not contain"):
        parse_twiml(xml)
    with pytest.raises(TwimlError, match="must not contain"):
        parse_twiml(xml.encode())


def test_undeclared_entity_is_malformed():
    with pytest.raises(TwimlError, match="not well-formed"):
        parse_twiml("<Response><Say>&xxe;</Say></Response>")


def test_size_limit():
    body = "<Response><Say>" + "a" * (MAX_TWIML_BYTES - 100) + "</Say></Response>"
    assert len(body) < MAX_TWIML_BYTES
    assert parse_twiml(body) == [Say("a" * (MAX_TWIML_BYTES - 100))]
    too_big = "<Response><Say>" + "a" * MAX_TWIML_BYTES + "</Say></Response>"
    with pytest.raises(TwimlError, match="larger than"):
        parse_twiml(too_big)
    with pytest.raises(TwimlError, match="larger than"):
        parse_twiml(too_big.encode())
    # the limit counts UTF-8 bytes, not characters
    wide = "<Response><Say>" + "é" * (MAX_TWIML_BYTES // 2) + "</Say></Response>"
    assert len(wide) < MAX_TWIML_BYTES
    with pytest.raises(TwimlError, match="larger than"):
        parse_twiml(wide)


def test_twiml_error_is_value_error():
    assert issubclass(TwimlError, ValueError)
