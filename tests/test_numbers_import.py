"""``numbers import``: Twilio IncomingPhoneNumbers export -> tenants TOML, over real files.

The CLI shell is driven through its own argparse registration (``add_parser``) exactly as
``audiosocket-gw numbers import`` parses it; the pure planner is tested directly for the
skip reasons and the hostile-input guarantees.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket_gw.numbers_import import (
    ExportEntry,
    NumbersImportError,
    add_parser,
    parse_export,
    plan_import,
    run,
    toml_string,
)
from audiosocket_gw.tenants import load_tenants, loads_tenants

ACCOUNT = "AC" + "0123456789abcdef" * 2
APP = "https://app.example.com/incoming-call"
STATUS = "https://app.example.com/status"
OTHER = "https://other.example.org/voice"


def number(phone: str, voice_url: str | None = APP, status: str | None = STATUS,
           **extra: Any) -> dict[str, Any]:
    """One IncomingPhoneNumbers resource as the REST API returns it (trimmed)."""
    d: dict[str, Any] = {
        "sid": "PN" + "1" * 32, "account_sid": ACCOUNT, "friendly_name": f"Line {phone}",
        "phone_number": phone, "voice_url": voice_url, "voice_method": "POST",
        "voice_fallback_url": None, "status_callback": status,
        "status_callback_method": "POST", "voice_application_sid": None, "trunk_sid": None,
        "capabilities": {"voice": True, "sms": True}, "status": "in-use",
    }
    d.update(extra)
    return d


def api_page(*numbers: object, next_page: str | None = None) -> dict[str, Any]:
    return {"incoming_phone_numbers": list(numbers), "page": 0, "page_size": 50,
            "next_page_uri": next_page, "uri": "/2010-04-01/Accounts/x/IncomingPhoneNumbers.json"}


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], export: object,
            *flags: str, config: Path | None = None) -> tuple[int, str]:
    """Run ``numbers import`` on ``export`` (written to a file) as the CLI parses it;
    returns (exit code, stdout + stderr)."""
    src = tmp_path / "export.json"
    src.write_text(json.dumps(export), encoding="utf-8")
    parser = argparse.ArgumentParser(prog="audiosocket-gw")
    add_parser(parser.add_subparsers(dest="command", required=True))
    cfg = config or tmp_path / "tenants.toml"
    args = parser.parse_args(["numbers", "import", str(src), "--config", str(cfg), *flags])
    code = run(args)
    out = capsys.readouterr()
    return code, out.out + out.err


EXPORT = api_page(
    number("+15551230001"),
    number("+15551230002"),
    number("+15551230003", voice_url=OTHER, status=None),
)


def test_round_trip_new_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(tmp_path, capsys, EXPORT)
    assert code == 0, out
    path = tmp_path / "tenants.toml"
    assert not (tmp_path / "tenants.toml.bak").exists()  # nothing to back up
    cfg = load_tenants(path)
    for did, url, status in (("+15551230001", APP, STATUS), ("+15551230002", APP, STATUS),
                             ("+15551230003", OTHER, None)):
        num = cfg.lookup_did(did)
        assert num is not None, did
        agent = cfg.agents[num.agent]
        assert agent.backend == "twilio-stream"
        assert (agent.voice_url, agent.status_callback, agent.stream_url) == (url, status, None)
        assert num.tenant == "default"
    # One agent per distinct (voice_url, status_callback).
    assert len(cfg.agents) == 2
    assert cfg.lookup_did("+15551230001").agent == cfg.lookup_did("+15551230002").agent  # type: ignore[union-attr]
    assert cfg.tenants["default"].twilio_account_sid == ACCOUNT
    assert cfg.default_agent in cfg.agents
    assert out.count(" added ") == 3 and "3 added, 0 updated, 0 unchanged, 0 skipped" in out
    # Friendly name and SID are kept as a comment above each number.
    assert "# Line +15551230001 PN" in path.read_text()


def test_merge_keeps_existing_text_and_backs_up(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.toml"
    old = ('# our config\n[tenants.acme]\nname = "Acme"  # keep me\n\n'
           '[agents.support]\ntenant = "acme"\nbackend = "openai"\n'
           'instructions = """multi\n[numbers."+15550000000"]\nline"""\n\n'
           '[numbers."+15559990000"]\nagent = "support"')  # no final newline
    path.write_text(old)
    code, out = run_cli(tmp_path, capsys, EXPORT, "--tenant", "acme")
    assert code == 0, out
    new = path.read_text()
    # default_agent is needed now that there are several agents; it keeps the old one.
    assert new.startswith('default_agent = "support"\n' + old + "\n")
    assert (tmp_path / "tenants.toml.bak").read_text() == old
    cfg = load_tenants(path)
    assert cfg.default_agent == "support"
    assert cfg.lookup_did("+15559990000").agent == "support"  # type: ignore[union-attr]
    assert cfg.agents["support"].instructions.startswith("multi\n[numbers.")
    num = cfg.lookup_did("+15551230001")
    assert num is not None and num.tenant == "acme"
    assert cfg.tenants["acme"].twilio_account_sid is None
    # The tenant has no AccountSid: each new agent carries the export's.
    assert cfg.agents[num.agent].extra["account_sid"] == ACCOUNT
    assert "default_agent set to support" in out


def test_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.acme]\n[agents.bot]\ntenant = "acme"\nbackend = "echo"\n')
    assert run_cli(tmp_path, capsys, EXPORT)[0] == 0
    first = path.read_bytes()
    backup = (tmp_path / "tenants.toml.bak").read_bytes()
    code, out = run_cli(tmp_path, capsys, EXPORT)
    assert code == 0
    assert path.read_bytes() == first
    assert (tmp_path / "tenants.toml.bak").read_bytes() == backup  # not rewritten either
    assert out.count(" unchanged ") == 3 and "nothing to change" in out
    # The twilio CLI's shape (bare list, camelCase keys) is the same routing.
    camel = [{"phoneNumber": n["phone_number"], "friendlyName": n["friendly_name"],
              "voiceUrl": n["voice_url"], "voiceMethod": "POST",
              "statusCallback": n["status_callback"], "accountSid": ACCOUNT}
             for n in EXPORT["incoming_phone_numbers"]]
    code, out = run_cli(tmp_path, capsys, camel)
    assert code == 0 and path.read_bytes() == first, out


def test_skip_reasons_and_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = api_page(
        number("12345"),                                            # not E.164
        number("+15551230010", voice_url=None),                     # missing voice_url
        number("+15551230011", voice_url=None, voice_application_sid="AP" + "2" * 32),
        number("+15551230012", voice_url=None, trunk_sid="TK" + "3" * 32),
        number("+15551230013", voice_url="ftp://app.example.com/x"),
        number("+15551230014", voice_url="https://app.example.com/a b"),
        number("+15551230015", voice_method="GET", voice_fallback_url="https://f.example/x"),
        number("(555) 123-0015"),                                   # duplicate after normalising
        "not an object",
        number("+15551230016", phone_number=15551230016),           # not a string
        number("+15551230017", status_callback="javascript:alert(1)"),
        next_page="/2010-04-01/Accounts/x/IncomingPhoneNumbers.json?Page=1",
    )
    code, out = run_cli(tmp_path, capsys, export)
    assert code == 1  # some skipped, the rest imported
    lines = out.splitlines()

    def line_of(text: str) -> str:
        return next(x for x in lines if x.startswith(text))

    assert "skipped" in line_of("12345") and "not a valid E.164" in line_of("12345")
    assert "missing voice_url" in line_of("+15551230010")
    assert "TwiML App AP" in line_of("+15551230011")
    assert "SIP trunk" in line_of("+15551230012")
    assert "not an http(s) URL" in line_of("+15551230013")
    assert "not an http(s) URL" in line_of("+15551230014")
    assert " added " in line_of("+15551230015")
    assert "duplicate" in next(x for x in lines if "duplicate" in x)
    assert "entry is not an object" in line_of("#8")
    assert "phone_number is not a string" in line_of("#9")
    assert " added " in line_of("+15551230017")
    assert "voice_method GET" in out and "voice_fallback_url not imported" in out
    assert "status_callback ignored" in out
    assert "one page of several" in out
    cfg = load_tenants(tmp_path / "tenants.toml")
    assert set(cfg.numbers) == {"+15551230015", "+15551230017"}
    assert cfg.agents[cfg.numbers["+15551230017"].agent].status_callback is None


def test_conflict_left_alone_unless_force(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.toml"
    old = ('default_agent = "support"\n[tenants.acme]\n[agents.support]\ntenant = "acme"\n'
           'backend = "openai"\n\n# the main line\n[numbers."(555) 123-0001"]  # NANP form\n'
           'tenant = "acme"\nagent = "support"\n\n[numbers."+15551239999"]\nagent = "support"\n')
    path.write_text(old)
    code, out = run_cli(tmp_path, capsys, EXPORT)
    assert code == 1
    assert "already routed to agent support" in out and "--force" in out
    cfg = load_tenants(path)
    assert cfg.lookup_did("+15551230001").agent == "support"  # type: ignore[union-attr]
    assert cfg.lookup_did("+15551230002") is not None  # the others were imported

    code, out = run_cli(tmp_path, capsys, EXPORT, "--force")
    assert code == 0, out
    assert "+15551230001     updated   -> agent twilio-app-example-com (was agent support)" \
        in out
    text = path.read_text()
    assert "# the main line\n" in text and '[numbers."(555) 123-0001"]  # NANP form\n' in text
    cfg = load_tenants(path)
    agent = cfg.agents[cfg.lookup_did("+15551230001").agent]  # type: ignore[union-attr]
    assert (agent.voice_url, agent.status_callback) == (APP, STATUS)
    assert cfg.lookup_did("+15551239999").agent == "support"  # type: ignore[union-attr]
    # And forcing again changes nothing.
    assert run_cli(tmp_path, capsys, EXPORT, "--force")[0] == 0
    assert path.read_text() == text


def test_inline_tables_are_refused_not_broken(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.toml"
    old = ('numbers = { "+15559990000" = { agent = "a" } }\n[tenants.t]\n'
           '[agents.a]\ntenant = "t"\nbackend = "echo"\n')
    path.write_text(old)
    code, out = run_cli(tmp_path, capsys, EXPORT)
    assert code == 2 and "would not load" in out and "inline" in out
    assert path.read_text() == old and not (tmp_path / "tenants.toml.bak").exists()
    # A conflicting inline number under --force is reported, not rewritten.
    plan = plan_import(old, parse_export([number("+15559990000")])[0], force=True)
    assert plan.results[0].action == "skipped"
    assert "cannot rewrite" in plan.results[0].reason and not plan.changed


HOSTILE = ['Sales "HQ"\n[numbers."+19995550000"]\nagent = "evil"', "back\\slash\\",
           "tab\tbell\x07del\x7f", "\ud800 lone surrogate", "line\u2028sep", "'''", '"""']


def test_hostile_strings_cannot_break_the_toml(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = 'https://app.example.com/v?q="]\\x&y=[numbers]#frag'
    export = [number(f"+1555123{i:04d}", voice_url=url, friendly_name=name,
                     status_callback=f"https://cb.example.com/{i}'\"\\",
                     sid='PN"\n[x]') for i, name in enumerate(HOSTILE)]
    code, out = run_cli(tmp_path, capsys, export)
    assert code == 0, out
    path = tmp_path / "tenants.toml"
    text = path.read_text(encoding="utf-8")
    cfg = load_tenants(path)
    assert set(cfg.numbers) == {f"+1555123{i:04d}" for i in range(len(HOSTILE))}
    assert "+19995550000" not in cfg.numbers and "evil" not in cfg.agents
    for i in range(len(HOSTILE)):
        agent = cfg.agents[cfg.numbers[f"+1555123{i:04d}"].agent]
        assert agent.voice_url == url
        assert agent.status_callback == f"https://cb.example.com/{i}'\"\\"
    for line in text.splitlines():  # every comment stayed on its own line
        assert not line.startswith("[numbers.\"+1999")
    assert "\x07" not in text and "\x7f" not in text
    # The report is one line per number too.
    assert sum(1 for x in out.splitlines() if " added " in x) == len(HOSTILE)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_toml_string_round_trips(s: str) -> None:
    assert tomllib.loads(f"k = {toml_string(s)}")["k"] == s


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(tmp_path, capsys, EXPORT, "--dry-run")
    assert code == 0 and "dry run" in out and out.count(" added ") == 3
    assert not (tmp_path / "tenants.toml").exists()


def test_crlf_file_stays_crlf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tenants.toml"
    path.write_bytes(b'[tenants.acme]\r\n[agents.bot]\r\ntenant = "acme"\r\nbackend = "echo"\r\n')
    assert run_cli(tmp_path, capsys, EXPORT)[0] == 0
    data = path.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert len(load_tenants(path).numbers) == 3


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Several tenants: which one must be said.
    path = tmp_path / "tenants.toml"
    two = ('default_agent = "a"\n[tenants.t1]\n[tenants.t2]\n'
           '[agents.a]\ntenant = "t1"\nbackend = "echo"\n')
    path.write_text(two)
    code, out = run_cli(tmp_path, capsys, EXPORT)
    assert code == 2 and "pass --tenant" in out and path.read_text() == two
    code, out = run_cli(tmp_path, capsys, EXPORT, "--tenant", "t2")
    assert code == 0 and load_tenants(path).lookup_did("+15551230001").tenant == "t2"  # type: ignore[union-attr]
    # Invalid tenant id, invalid existing file, not an export, not JSON.
    assert run_cli(tmp_path, capsys, EXPORT, "--tenant", "a b")[0] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[agents.x]\ntenant = "nope"\nbackend = "echo"\n')
    code, out = run_cli(tmp_path, capsys, EXPORT, config=bad)
    assert code == 2 and "fix the file" in out
    assert run_cli(tmp_path, capsys, {"numbers": []})[0] == 2
    (tmp_path / "x.json").write_text("{nope")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["numbers", "import", str(tmp_path / "x.json"),
                              "--config", str(path)])
    assert run(args) == 2
    (tmp_path / "export.json").write_text(json.dumps(EXPORT))
    # The tenants file defaults to AIGW_CONFIG; without it there is nothing to update.
    monkeypatch.delenv("AIGW_CONFIG", raising=False)
    args = parser.parse_args(["numbers", "import", str(tmp_path / "export.json")])
    assert run(args) == 2
    monkeypatch.setenv("AIGW_CONFIG", str(tmp_path / "env.toml"))
    assert run(args) == 0 and len(load_tenants(tmp_path / "env.toml").numbers) == 3
    assert "AIGW_CONFIG" in capsys.readouterr().err


def test_parse_export_shapes() -> None:
    entries, warnings = parse_export(api_page(number("+15551230001")))
    assert warnings == [] and entries[0].phone_number == "+15551230001"
    assert entries[0].voice_url == APP and entries[0].account_sid == ACCOUNT
    entries, _ = parse_export([{"phone_number": " +15551230001 ", "voice_url": "",
                                "voice_method": 3}])
    assert entries[0] == ExportEntry(index=0, phone_number="+15551230001",
                                     problems=("voice_method",))
    junks: list[object] = ["text", 3, {"incoming_phone_numbers": {}}, {"other": []}]
    for junk in junks:
        with pytest.raises(NumbersImportError):
            parse_export(junk)
    assert loads_tenants(plan_import("", parse_export([])[0]).text or
                         '[tenants.t]\n[agents.a]\ntenant = "t"\nbackend = "echo"\n')
