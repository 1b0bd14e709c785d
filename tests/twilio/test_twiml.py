"""Tests for TwiML parsing, with documents shaped like Twilio's documentation examples."""

from __future__ import annotations

import pytest

from audiosocket_gw.dial import DialTarget
from audiosocket_gw.twilio.twiml import (
    MAX_TWIML_BYTES,
    ConnectStream,
    Dial,
    Gather,
    Hangup,
    Pause,
    Play,
    PlayDigits,
    Record,
    Redirect,
    Reject,
    Say,
    StartStream,
    StopStream,
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
        Say("Please wait while we connect your call.", voice="Google.en-US-Chirp3-HD-Aoede"),
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


def test_start_stream():
    assert parse_twiml(START_STREAM) == [StartStream("wss://mystream.ngrok.io/audiostream"),
                                         Say("The stream has started.")]


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
        PlayDigits("wwww3"),
        Pause(5),
        Pause(1),
        Say("Bonjour à tous!", language="fr-FR"),
        Say("1 < 2 & 3"),
        Redirect("https://example.com/next"),
        Gather(input=frozenset({"speech"}), action="/gather", prompts=(Say("Hi"),)),
        Dial((DialTarget("number", "+15551234567"),)),
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


IVR = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather input="dtmf speech" numDigits="3" finishOnKey="*" timeout="7" speechTimeout="2"
          action="/menu" method="GET" actionOnEmptyResult="true" language="fr-FR">
    <Say voice="alice" language="en-GB" loop="2">Press one.</Say>
    <Play>/menu.wav</Play>
    <Pause length="2"/>
  </Gather>
  <Record action="/rec" timeout="3" finishOnKey="#" maxLength="20" playBeep="false"
          trim="do-not-trim" recordingStatusCallback="/rs" transcribe="true"
          transcribeCallback="/tr"/>
  <Dial action="/dialed" timeout="20" callerId="+15550001111" record="record-from-answer"
        hangupOnStar="true" timeLimit="600">
    <Number sendDigits="1w2">+1 (555) 123-4567</Number>
    <Sip>sip:alice@pbx.example.com;transport=tls</Sip>
  </Dial>
  <Start><Stream url="wss://fork.example/s" name="f1" track="both_tracks"
                 statusCallback="/ss"><Parameter name="k" value="v"/></Stream></Start>
  <Stop><Stream name="f1"/></Stop>
  <Dial><Client>bob</Client></Dial>
  <Start><Transcription/></Start>
</Response>"""


def test_ivr_verbs_and_attributes():
    assert parse_twiml(IVR) == [
        Gather(input=frozenset({"dtmf", "speech"}), num_digits=3, finish_on_key="*",
               timeout=7, speech_timeout=2, action="/menu", method="GET",
               action_on_empty_result=True, language="fr-FR",
               prompts=(Say("Press one.", voice="alice", language="en-GB", loop=2),
                        Play("/menu.wav"), Pause(2))),
        Record(action="/rec", timeout=3, finish_on_key="#", max_length=20, play_beep=False,
               trim=False, recording_status_callback="/rs", transcribe=True,
               transcribe_callback="/tr"),
        Dial((DialTarget("number", "+15551234567", send_digits="1w2"),
              DialTarget("sip", "sip:alice@pbx.example.com;transport=tls")),
             action="/dialed", timeout=20, caller_id="+15550001111", record=True,
             hangup_on_star=True, time_limit=600),
        StartStream("wss://fork.example/s", name="f1", track="both_tracks",
                    parameters={"k": "v"}, status_callback="/ss"),
        StopStream("f1"),
        Unsupported("Dial"),
        Unsupported("Start"),
    ]


def test_defaults():
    verbs = parse_twiml("<Response><Gather/><Record/><Dial> +15550001111 </Dial></Response>")
    assert verbs == [Gather(), Record(), Dial((DialTarget("number", "+15550001111"),))]
    g = verbs[0]
    assert isinstance(g, Gather)
    assert (g.finish_on_key, g.timeout, g.num_digits, g.action) == ("#", 5, None, None)


@pytest.mark.parametrize(
    ("xml", "match"),
    [
        ('<Gather input="fax"/>', "Gather input"),
        ('<Gather numDigits="0"/>', "numDigits"),
        ('<Gather method="PUT"/>', "GET or POST"),
        ('<Gather finishOnKey="a"/>', "finishOnKey"),
        ("<Gather><Dial>+1555</Dial></Gather>", "may nest only"),
        ('<Record playBeep="maybe"/>', "playBeep"),
        ('<Record maxLength="0"/>', "maxLength"),
        ('<Record trim="x"/>', "trim"),
        ("<Dial/>", "requires a number"),
        ("<Dial>call me maybe</Dial>", "phone number"),
        ("<Dial><Sip>http://x</Sip></Dial>", "sip:"),
        ('<Dial record="loud">+1555</Dial>', "record"),
        ('<Dial callerId="a b">+1555</Dial>', "callerId"),
        ('<Dial><Number sendDigits="x">+1555</Number></Dial>', "sendDigits"),
        ('<Start><Stream url="https://x"/></Start>', "ws://"),
        ('<Start><Stream url="wss://x" track="left"/></Start>', "track"),
        ('<Say loop="-1">x</Say>', "loop"),
    ],
)
def test_new_verbs_invalid(xml, match):
    with pytest.raises(TwimlError, match=match):
        parse_twiml(f"<Response>{xml}</Response>")
