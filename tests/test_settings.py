"""One ``Settings``: every variable documented, read in one place, bad values refused
at startup with a message naming the file, the agent and the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from audiosocket_gw.config import ConfigError
from audiosocket_gw.provider import ENV_VARS as PROVIDER_ENV
from audiosocket_gw.settings import ENV_VARS, Settings

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "audiosocket_gw"
# Read by the Asterisk side (AGI script, MixMonitor hook), not by the gateway process.
ASTERISK_SIDE = {"AIGW_API_TOKEN_FILE", "AIGW_ROUTE_URL", "AIGW_ROUTE_TIMEOUT", "AIGW_HTTP_URL"}
# Read by libraries (boto3), documented too.
OTHER_READERS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# Read by the app's side: the provider library (audiosocket_gw/provider/, in the app's
# process), documented under "App side (provider library)".
APP_SIDE = set(PROVIDER_ENV)
# Modules allowed to read the process environment: the settings themselves, the
# standalone recording worker's settings, client-side CLI tools, the app-side provider
# library and the fenced tooling.
ENV_READERS = {"config.py", "settings.py", "recordings/settings.py", "cli_call.py",
               "cli_rollout.py", "numbers_import.py", "provider/factory.py"}


def example_vars() -> set[str]:
    text = (REPO / ".env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))


def test_env_example_matches_the_settings() -> None:
    documented = example_vars()
    assert ENV_VARS - documented == set(), "read but not in .env.example"
    assert documented - ENV_VARS - ASTERISK_SIDE - OTHER_READERS - APP_SIDE == set(), \
        "in .env.example, read by nobody"
    assert APP_SIDE - documented == set(), "read by the provider library, not documented"
    text = (REPO / ".env.example").read_text()
    app_section = text[text.index("App side (provider library)"):]
    app_section = app_section[:app_section.index("\n# ===")]
    for name in APP_SIDE - ENV_VARS:
        assert f"{name}=" in app_section, f"{name}: not under the App side heading"
    provider_text = "".join(p.read_text() for p in (PKG / "provider").glob("*.py"))
    for name in APP_SIDE:
        assert f'"{name}"' in provider_text, f"{name} is not read by provider/"
    asterisk_text = "".join(p.read_text() for p in [*(REPO / "agi").glob("*.py"),
                                                   *(REPO / "dialplan").glob("*.conf")])
    for name in ASTERISK_SIDE:
        assert name in asterisk_text, f"{name} is read by neither agi/ nor dialplan/"


def test_only_the_settings_read_the_environment() -> None:
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if rel in ENV_READERS or rel.startswith("testing/") or "/testing/" in rel:
            continue
        text = path.read_text()
        if re.search(r"os\.environ|os\.getenv", text):
            offenders.append(rel)
    assert offenders == []


def test_groups_are_read_and_validated_once() -> None:
    s = Settings.load({"AIGW_AMI_HOST": "127.0.0.1", "AIGW_AMI_SECRET": "s3cret-value",
                       "AIGW_RING_TIMEOUT_S": "45", "AIGW_COST_AI_PER_MIN": "0.06",
                       "ACME_TOKEN": "tok"})
    assert s.ami is not None and s.ami.host == "127.0.0.1"
    assert "s3cret-value" not in repr(s)
    assert s.outbound.ring_timeout_s == 45.0 and s.cost.ai_per_min == 0.06
    assert s.secret("ACME_TOKEN") == "tok" and s.secret("NOPE") is None
    for env, name in [({"AIGW_RING_TIMEOUT_S": "0"}, "AIGW_RING_TIMEOUT_S"),
                      ({"AIGW_COST_AI_PER_MIN": "-1"}, "AIGW_COST_AI_PER_MIN"),
                      ({"AIGW_COST_TRUNK_PER_MIN": "nan"}, "AIGW_COST_TRUNK_PER_MIN"),
                      ({"AIGW_AMI_HOST": "h", "AIGW_AMI_PORT": "x"}, "AIGW_AMI_PORT"),
                      ({"AIGW_DIAL_TEMPLATE": "PJSIP/trunk"}, "AIGW_DIAL_TEMPLATE"),
                      ({"AIGW_TWILIO_ACCOUNT_SID": "AC1"}, "AIGW_TWILIO_ACCOUNT_SID")]:
        with pytest.raises(ConfigError, match=name):
            Settings.load(env)


BAD_AGENT = """
[tenants.acme]
max_concurrent_calls = 2

[agents.sales]
tenant = "acme"
backend = "openai"

[agents.sales.extra]
audio_format = "wav"
"""


@pytest.mark.parametrize(("extra", "key"), [
    ('audio_format = "wav"', "audio_format"),
    ('reconnect_attempts = "many"', "reconnect_attempts"),
])
def test_a_bad_agent_setting_stops_serve_at_startup(tmp_path: Path, extra: str,
                                                     key: str) -> None:
    cfg = tmp_path / "tenants.toml"
    cfg.write_text(BAD_AGENT.replace('audio_format = "wav"', extra))
    r = subprocess.run(
        [sys.executable, "-m", "audiosocket_gw", "serve", "--config", str(cfg),
         "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-test",
             "AIGW_OPENAI_URL": "ws://127.0.0.1:9/v1/realtime"},
    )
    assert r.returncode == 2, r.stderr
    assert str(cfg) in r.stderr and "'sales'" in r.stderr and key in r.stderr


def test_a_bad_twilio_agent_option_stops_serve(tmp_path: Path) -> None:
    cfg = tmp_path / "tenants.toml"
    cfg.write_text('[tenants.acme]\n[agents.app]\ntenant = "acme"\nbackend = "twilio-stream"\n'
                   'stream_url = "ws://127.0.0.1:9/media"\n'
                   '[agents.app.extra]\non_app_close = "explode"\n')
    r = subprocess.run(
        [sys.executable, "-m", "audiosocket_gw", "serve", "--config", str(cfg),
         "--audiosocket", "127.0.0.1:0", "--http", "127.0.0.1:0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2, r.stderr
    assert "'app'" in r.stderr and "on_app_close" in r.stderr
