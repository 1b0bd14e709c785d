"""Tenants TOML: the documented example, defaults, every error, E.164 normalisation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket_gw import config as gw_config
from audiosocket_gw.tenants import (
    Agent,
    ConfigError,
    Number,
    Tenant,
    TenantsConfig,
    load_tenants,
    loads_tenants,
    normalize_e164,
    tenants_from_dict,
)

EXAMPLE = """
default_agent = "support"
[tenants.acme]
name = "Acme"
max_concurrent_calls = 20
[agents.support]
tenant = "acme"
backend = "openai"
instructions = "You are..."
greeting = "Hello, Acme support."
record = true
[numbers."+15551230000"]
agent = "support"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tenants.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_docstring_example(tmp_path: Path) -> None:
    cfg = load_tenants(write(tmp_path, EXAMPLE))
    assert cfg.default_agent == "support"
    assert cfg.tenants == {"acme": Tenant(id="acme", name="Acme", max_concurrent_calls=20)}
    agent = cfg.agents["support"]
    assert agent.tenant == "acme"
    assert agent.backend == "openai"
    assert agent.instructions == "You are..."
    assert agent.greeting == "Hello, Acme support."
    assert agent.record is True
    # defaults
    assert agent.voice == "marin"
    assert agent.recording_source == "gateway"
    assert agent.silence_timeout_s == 20.0
    assert agent.voicemail_budget_s == 15.0
    assert agent.voicemail_action == "hangup"
    assert agent.max_duration_s == 3600.0
    assert agent.echo_delay_ms == 200
    assert agent.status_events == ("completed",)
    assert agent.stream_url is None and agent.voice_url is None
    assert dict(agent.extra) == {}
    assert cfg.numbers == {
        "+15551230000": Number(did_e164="+15551230000", tenant="acme", agent="support")
    }
    assert cfg.tenant_of(agent).name == "Acme"
    assert cfg.agent("support") is agent
    assert cfg.agent("nope") is None


def test_module_docstring_example_parses() -> None:
    """The full example in the module docstring is a valid file."""
    import audiosocket_gw.tenants as mod

    doc = mod.__doc__ or ""
    block = doc.split("File format::", 1)[1].split("\nIds of tenants", 1)[0]
    text = "\n".join(line[4:] for line in block.splitlines())
    cfg = loads_tenants(text)
    assert cfg.agents["support"].extra == {"model": "gpt-realtime"}
    assert cfg.tenants["acme"].twilio_account_sid == "AC0123456789abcdef0123456789abcdef"
    assert cfg.tenants["acme"].twilio_auth_token_env == "ACME_TWILIO_AUTH_TOKEN"


@pytest.mark.parametrize(
    "did",
    [
        "+15551230000",
        "15551230000",
        "5551230000",
        "(555) 123-0000",
        "+1 555.123.0000",
        "0015551230000",
    ],
)
def test_lookup_did_formats(tmp_path: Path, did: str) -> None:
    cfg = load_tenants(write(tmp_path, EXAMPLE))
    found = cfg.lookup_did(did)
    assert found is not None and found.agent == "support" and found.tenant == "acme"


@pytest.mark.parametrize("did", ["+15551239999", "unknown", "", "<unknown>", "+1555123000O"])
def test_lookup_did_miss(tmp_path: Path, did: str) -> None:
    assert load_tenants(write(tmp_path, EXAMPLE)).lookup_did(did) is None


def test_default_config() -> None:
    cfg = load_tenants(None)
    assert isinstance(cfg, TenantsConfig)
    assert cfg.default_agent == "default"
    assert set(cfg.tenants) == {"default"}
    assert cfg.agents["default"].backend == "echo"
    assert cfg.agents["default"].tenant == "default"
    assert dict(cfg.numbers) == {}
    assert cfg.lookup_did("+15551230000") is None


def test_full_agent_and_number_forms(tmp_path: Path) -> None:
    text = """
[tenants.t1]
[tenants.t2]
max_concurrent_calls = 1
twilio_account_sid = "AC11111111111111111111111111111111"
twilio_auth_token_env = "T2_TOKEN"
[agents.a1]
tenant = "t1"
backend = "twilio-stream"
stream_url = "wss://app.example/media"
voice_url = "https://app.example/voice"
status_callback = "http://app.example/status"
status_events = ["initiated", "answered", "completed", "answered"]
recording_source = "mixmonitor"
silence_timeout_s = 5
voicemail_budget_s = 0
voicemail_action = "leave_message"
max_duration_s = 60.5
debug_dump = true
echo_delay_ms = 0
voice = "alloy"
[agents.a1.extra]
k = "v"
[agents.a2]
tenant = "t2"
backend = "echo"
[numbers."(555) 123-0000"]
agent = "a1"
[numbers."0044 20 7123 4567"]
agent = "a2"
tenant = "t2"
"""
    cfg = loads_tenants('default_agent = "a2"\n' + text)
    a1 = cfg.agents["a1"]
    assert a1.status_events == ("initiated", "answered", "completed")
    assert a1.silence_timeout_s == 5.0 and isinstance(a1.silence_timeout_s, float)
    assert a1.voicemail_budget_s == 0.0
    assert a1.recording_source == "mixmonitor"
    assert a1.voicemail_action == "leave_message"
    assert a1.debug_dump and a1.echo_delay_ms == 0 and a1.voice == "alloy"
    assert a1.extra == {"k": "v"}
    assert cfg.tenants["t1"].name == "t1"
    assert cfg.tenants["t2"].twilio_account_sid == "AC" + "1" * 32
    assert cfg.tenants["t2"].twilio_auth_token_env == "T2_TOKEN"
    assert cfg.tenants["t1"].twilio_account_sid is None
    assert cfg.tenants["t1"].twilio_auth_token_env is None
    assert set(cfg.numbers) == {"+15551230000", "+442071234567"}
    assert cfg.lookup_did("+44 20 7123 4567") == Number("+442071234567", "t2", "a2")


def test_frozen() -> None:
    cfg = load_tenants(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.agents["default"].backend = "openai"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.agents["x"] = cfg.agents["default"]  # type: ignore[index]
    agent = Agent(name="a", tenant="t", backend="echo", extra={"a": "b"})
    assert agent == Agent(name="a", tenant="t", backend="echo", extra={"a": "b"})
    hash(agent)


def test_default_agent_single_agent_implied() -> None:
    cfg = loads_tenants('[tenants.t]\n[agents.only]\ntenant = "t"\nbackend = "echo"\n')
    assert cfg.default_agent == "only"


BASE = '[tenants.t]\n[agents.a]\ntenant = "t"\nbackend = "echo"\n'

BAD: list[tuple[str, str, str]] = [
    ("unknown top key", BASE + "colour = 1\n", "unknown key 'colour'"),
    (
        "unknown tenant key",
        '[tenants.t]\nmax_calls = 3\n[agents.a]\ntenant = "t"\nbackend = "echo"\n',
        "tenants.t: unknown key 'max_calls'",
    ),
    ("unknown agent key", BASE + "temperature = 1\n", "agents.a: unknown key 'temperature'"),
    (
        "unknown number key",
        BASE + '[numbers."+15551230000"]\nagent = "a"\nfoo = 1\n',
        "unknown key 'foo'",
    ),
    (
        "wrong type int",
        '[tenants.t]\nmax_concurrent_calls = "5"\n' + BASE[11:],
        "tenants.t.max_concurrent_calls: expected an integer",
    ),
    (
        "bool is not int",
        "[tenants.t]\nmax_concurrent_calls = true\n" + BASE[11:],
        "expected an integer",
    ),
    ("zero limit", "[tenants.t]\nmax_concurrent_calls = 0\n" + BASE[11:], "must be >= 1"),
    ("wrong type bool", BASE + 'record = "yes"\n', "agents.a.record: expected true or false"),
    (
        "wrong type float",
        BASE + 'silence_timeout_s = "20"\n',
        "agents.a.silence_timeout_s: expected a number",
    ),
    ("negative float", BASE + "max_duration_s = -1.0\n", "agents.a.max_duration_s: must be > 0"),
    ("nan float", BASE + "silence_timeout_s = nan\n", "silence_timeout_s: must be > 0"),
    (
        "bad backend",
        '[tenants.t]\n[agents.a]\ntenant = "t"\nbackend = "twilio"\n',
        "agents.a.backend: 'twilio' is not one of",
    ),
    ("missing backend", '[tenants.t]\n[agents.a]\ntenant = "t"\n', "agents.a.backend: is required"),
    (
        "missing tenant",
        '[tenants.t]\n[agents.a]\nbackend = "echo"\n',
        "agents.a.tenant: is required",
    ),
    (
        "unknown tenant",
        '[tenants.t]\n[agents.a]\ntenant = "x"\nbackend = "echo"\n',
        "agents.a.tenant: unknown tenant 'x'",
    ),
    ("bad recording source", BASE + 'recording_source = "tape"\n', "recording_source"),
    ("bad voicemail action", BASE + 'voicemail_action = "beep"\n', "voicemail_action"),
    ("bad status event", BASE + 'status_events = ["done"]\n', "status_events: 'done'"),
    (
        "status events not list",
        BASE + 'status_events = "completed"\n',
        "expected a list of strings",
    ),
    (
        "extra not strings",
        BASE + "[agents.a.extra]\nn = 1\n",
        "agents.a.extra.n: expected a string",
    ),
    ("bad stream url", BASE + 'stream_url = "http://x"\n', "stream_url: must be a ws or wss URL"),
    (
        "bad status callback",
        BASE + 'status_callback = "ftp://x"\n',
        "status_callback: must be a http or https URL",
    ),
    (
        "twilio-stream without url",
        '[tenants.t]\n[agents.a]\ntenant = "t"\nbackend = "twilio-stream"\n',
        "needs stream_url or voice_url",
    ),
    (
        "number unknown agent",
        BASE + '[numbers."+15551230000"]\nagent = "zz"\n',
        "numbers.\"+15551230000\".agent: unknown agent 'zz'",
    ),
    ("number missing agent", BASE + '[numbers."+15551230000"]\n', "agent: is required"),
    (
        "number tenant mismatch",
        BASE + '[tenants.u]\n[numbers."+15551230000"]\nagent = "a"\ntenant = "u"\n',
        "differs from agent",
    ),
    (
        "number unparseable",
        BASE + '[numbers."sales"]\nagent = "a"\n',
        'numbers."sales": is not a phone number',
    ),
    (
        "number duplicate",
        BASE + '[numbers."+15551230000"]\nagent = "a"\n[numbers."5551230000"]\nagent = "a"\n',
        "duplicate of number +15551230000",
    ),
    ("default agent unknown", 'default_agent = "zz"\n' + BASE, "default_agent: unknown agent 'zz'"),
    (
        "default agent required",
        BASE + '[agents.b]\ntenant = "t"\nbackend = "echo"\n',
        "default_agent: is required",
    ),
    ("tenants not a table", "tenants = 3\n", "tenants: expected a table"),
    ("agent not a table", BASE + "[agents]\nb = 1\n", "expected a table"),
    ("bad id", '[tenants."a b"]\n', "tenant id 'a b'"),
    (
        "short account sid",
        '[tenants.t]\ntwilio_account_sid = "AC123"\n' + BASE[11:],
        "tenants.t.twilio_account_sid: must be 'AC' followed by 32 lowercase hex digits, "
        "got 'AC123'",
    ),
    (
        "account sid of another type",
        f'[tenants.t]\ntwilio_account_sid = "CA{"0" * 32}"\n' + BASE[11:],
        "tenants.t.twilio_account_sid: must be 'AC'",
    ),
    (
        "account sid not a string",
        "[tenants.t]\ntwilio_account_sid = 1\n" + BASE[11:],
        "tenants.t.twilio_account_sid: expected a string",
    ),
    (
        "old account sid key checked too",
        '[tenants.t]\naccount_sid = "AC1"\n' + BASE[11:],
        "tenants.t.account_sid: must be 'AC'",
    ),
    (
        "account sid under both names",
        f'[tenants.t]\naccount_sid = "AC{"0" * 32}"\ntwilio_account_sid = "AC{"0" * 32}"\n'
        + BASE[11:],
        "tenants.t.account_sid: set twilio_account_sid only",
    ),
    (
        "auth token env not a variable name",
        '[tenants.t]\ntwilio_auth_token_env = "$TOKEN"\n' + BASE[11:],
        "tenants.t.twilio_auth_token_env: must be an environment variable name",
    ),
    ("invalid toml", "[tenants.t\n", "invalid TOML"),
]


@pytest.mark.parametrize(("text", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_tenants(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ":"), msg
    assert fragment in msg, msg


def test_config_error_is_the_gateway_config_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert ConfigError is gw_config.ConfigError


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read tenants file"):
        load_tenants(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tenants(str(tmp_path))  # a directory


def test_from_dict_source_name() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: agents\.a\.backend"):
        tenants_from_dict({"tenants": {"t": {}}, "agents": {"a": {"tenant": "t"}}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+15551230000", "+15551230000"),
        ("  +1 (555) 123-0000 ", "+15551230000"),
        ("1-555-123-0000", "+15551230000"),
        ("555.123.0000", "+15551230000"),
        ("5551230000", "+15551230000"),
        ("0033142685300", "+33142685300"),
        ("+33 1 42 68 53 00", "+33142685300"),
        ("+123456789012345", "+123456789012345"),  # 15 digits, 16 chars
        ("+1234567890123456", None),  # 16 digits
        ("+0123456789", None),  # country code cannot start with 0
        ("0555123000", None),  # 10 digits not NANP
        ("1155512300", None),
        ("01234567", None),  # ambiguous national format
        ("442071234567", None),  # international without prefix: ambiguous
        ("+1555123000x", None),
        ("1+5551230000", None),
        ("++15551230000", None),
        ("+", None),
        ("+12", None),
        ("", None),
        ("<unknown>", None),
        ("anonymous", None),
        ("+١٥٥٥١٢٣٠٠٠٠", None),  # non-ASCII digits
        ("5551230000;ext=1", None),
        ("+1555\n1230000", None),
    ],
)
def test_normalize_e164(raw: str, expected: str | None) -> None:
    assert normalize_e164(raw) == expected


@given(st.text(max_size=30))
def test_normalize_e164_output_shape(raw: str) -> None:
    out = normalize_e164(raw)
    if out is not None:
        assert out[0] == "+" and out[1:].isascii() and out[1:].isdigit()
        assert 4 <= len(out) <= 16
        assert out[1] != "0"
        assert normalize_e164(out) == out  # idempotent


@given(st.from_regex(r"\A\+[1-9][0-9]{2,14}\Z"))
def test_normalize_e164_accepts_e164(e164: str) -> None:
    assert normalize_e164(e164) == e164


def test_old_account_sid_key_still_read() -> None:
    """``account_sid`` (the key's name before ``twilio_account_sid``) keeps working."""
    sid = "AC" + "ab" * 16
    cfg = loads_tenants(f'[tenants.t]\naccount_sid = "{sid}"\n' + BASE[11:])
    assert cfg.tenants["t"].twilio_account_sid == sid


@pytest.mark.parametrize("ident", [".", "..", ".hidden", "-rf", "_x"])
@pytest.mark.parametrize("kind", ["tenant", "agent"])
def test_ids_that_could_leave_a_directory_are_refused(kind: str, ident: str) -> None:
    data: dict[str, Any] = {"tenants": {"t": {}},
                            "agents": {"a": {"tenant": "t", "backend": "echo"}}}
    if kind == "tenant":
        data = {"tenants": {ident: {}}, "agents": {"a": {"tenant": ident, "backend": "echo"}}}
    else:
        data["agents"] = {ident: {"tenant": "t", "backend": "echo"}}
    with pytest.raises(ConfigError, match=f"{kind} id"):
        tenants_from_dict(data)
    # A normal id with dots and dashes inside is still fine.
    tenants_from_dict({"tenants": {"acme.eu-1": {}},
                       "agents": {"a_1": {"tenant": "acme.eu-1", "backend": "echo"}}})


# -- agent tools ---------------------------------------------------------------------

TOOLS_BASE = """
[tenants.t]
[agents.a]
tenant = "t"
backend = "openai"
"""
TOOL_OK = '[[agents.a.tools]]\nname = "lookup"\nurl = "https://h.example/x"\n'
DEST_OK = '[agents.a.transfer_destinations]\nsales = { number = "+15551230001" }\n'

BAD_TOOLS = [
    ("unknown builtin", 'builtin_tools = ["hang_up"]\n',
     "agents.a.builtin_tools: 'hang_up' is not one of end_call, transfer_call, send_dtmf"),
    ("transfer without destinations", 'builtin_tools = ["transfer_call"]\n',
     "agents.a.builtin_tools: transfer_call needs at least one"),
    ("tools not an array", 'tools = "x"\n', "agents.a.tools: expected an array of tables"),
    ("tool without url", '[[agents.a.tools]]\nname = "x"\n', "agents.a.tools[0].url: is required"),
    ("tool name", '[[agents.a.tools]]\nname = "a b"\nurl = "https://h/x"\n',
     "agents.a.tools[0].name: must be 1-64 characters"),
    ("tool named like a builtin", '[[agents.a.tools]]\nname = "end_call"\nurl = "https://h/x"\n',
     "agents.a.tools[0].name: 'end_call' is a built-in tool"),
    ("duplicate tool", TOOL_OK + TOOL_OK, "agents.a.tools[1].name: duplicate tool name"),
    ("tool url scheme", '[[agents.a.tools]]\nname = "x"\nurl = "ftp://h/x"\n',
     "agents.a.tools[0].url: must be a http or https URL"),
    ("tool timeout", TOOL_OK + "timeout_s = 120\n", "agents.a.tools[0].timeout_s: must be <= 60"),
    ("tool schema", TOOL_OK + 'parameters = { type = "string" }\n',
     "agents.a.tools[0].parameters: must be a JSON schema table"),
    ("tool secret env", TOOL_OK + 'secret_env = "$X"\n',
     "agents.a.tools[0].secret_env: must be an environment variable name"),
    ("tool unknown key", TOOL_OK + 'method = "GET"\n', "agents.a.tools[0]: unknown key 'method'"),
    ("destination without target", '[agents.a.transfer_destinations]\nx = { description = "d" }\n',
     "agents.a.transfer_destinations.x: set exactly one of number"),
    ("destination bad number", '[agents.a.transfer_destinations]\nx = { number = "12" }\n',
     "agents.a.transfer_destinations.x.number: is not a phone number"),
    ("destination two targets",
     '[agents.a.transfer_destinations]\nx = { number = "+15551230001", extension = "1" }\n',
     "agents.a.transfer_destinations.x: set exactly one of number"),
    ("destination bad extension", '[agents.a.transfer_destinations]\nx = { extension = "1,2" }\n',
     "agents.a.transfer_destinations.x.extension: must be 1-32 characters"),
    ("destination bad context",
     '[agents.a.transfer_destinations]\nx = { extension = "1", context = "a b" }\n',
     "agents.a.transfer_destinations.x.context: must be a dialplan context name"),
    ("context without extension",
     '[agents.a.transfer_destinations]\nx = { number = "+15551230001", context = "c" }\n',
     "agents.a.transfer_destinations.x.context: context goes with extension"),
    ("destination bad sip", '[agents.a.transfer_destinations]\nx = { sip = "desk" }\n',
     "agents.a.transfer_destinations.x.sip: must be sip:user@host"),
    ("attended decide timeout", DEST_OK.replace(
        "}", ', mode = "attended", decide_timeout_s = 500 }'),
     "agents.a.transfer_destinations.sales.decide_timeout_s: must be within 1..120"),
    ("bad mode", DEST_OK.replace("}", ', mode = "warm" }'),
     "agents.a.transfer_destinations.sales.mode"),
    ("unknown fallback", DEST_OK.replace("}", ', fallback = "nobody" }'),
     "agents.a.transfer_destinations.sales.fallback: unknown destination 'nobody'"),
    ("on_failure", DEST_OK.replace("}", ', on_failure = "voicemail" }'),
     "agents.a.transfer_destinations.sales.on_failure: 'voicemail' is not one of bot, hangup"),
]


@pytest.mark.parametrize(("extra", "fragment"), [b[1:] for b in BAD_TOOLS],
                         ids=[b[0] for b in BAD_TOOLS])
def test_tool_errors_name_file_agent_and_key(tmp_path: Path, extra: str, fragment: str) -> None:
    # plain keys go in [agents.a] itself, sub-tables after it
    path = write(tmp_path, TOOLS_BASE + extra)
    with pytest.raises(ConfigError) as info:
        load_tenants(path)
    msg = str(info.value)
    assert msg.startswith(str(path) + ":"), msg
    assert fragment in msg, msg


def test_tools_need_the_openai_backend(tmp_path: Path) -> None:
    text = TOOLS_BASE.replace('"openai"', '"echo"') + 'builtin_tools = ["end_call"]\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match='need backend = "openai"'):
        load_tenants(path)


def test_tools_parse(tmp_path: Path) -> None:
    text = (TOOLS_BASE + 'builtin_tools = ["end_call", "transfer_call"]\ndtmf_to_model = true\n'
            + TOOL_OK + 'secret_env = "S"\ntimeout_s = 2.5\n' + DEST_OK
            + 'desk = { sip = "sip:desk@pbx.example.com", fallback = "sales", '
              'on_failure = "hangup", timeout_s = 20 }\n')
    agent = load_tenants(write(tmp_path, text)).agents["a"]
    assert agent.builtin_tools == ("end_call", "transfer_call") and agent.dtmf_to_model
    assert agent.tools[0].name == "lookup" and agent.tools[0].timeout_s == 2.5
    assert agent.tools[0].secret_env == "S"
    assert dict(agent.tools[0].parameters) == {"type": "object", "properties": {}}
    desk = agent.transfer_destinations["desk"]
    assert (desk.kind, desk.address, desk.fallback, desk.on_failure, desk.timeout_s) == (
        "sip", "sip:desk@pbx.example.com", "sales", "hangup", 20.0)
    assert agent.transfer_destinations["sales"].address == "+15551230001"


def test_extension_destinations(tmp_path: Path) -> None:
    text = (TOOLS_BASE + '[agents.a.transfer_destinations]\nq = { extension = "600" }\n'
            'p = { extension = "*70", context = "internal-phones" }\n')
    dests = load_tenants(write(tmp_path, text)).agents["a"].transfer_destinations
    assert (dests["q"].kind, dests["q"].address) == ("extension", "600@from-internal")
    assert dests["p"].address == "*70@internal-phones"
