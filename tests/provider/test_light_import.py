"""The provider library imports with only its own light dependencies installed.

A fresh virtualenv gets ``twilio`` and nothing of the gateway's (no numpy, soundfile,
panoramisk, websockets, prometheus_client); the repository goes on ``PYTHONPATH``.
Importing ``audiosocket_gw.provider`` and building every provider must work there and
must not load any of the gateway's runtime dependencies. Skipped, saying why, when pip
cannot install ``twilio`` (offline without a wheel cache).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY_DEPS = ["numpy", "soundfile", "panoramisk", "websockets", "prometheus_client"]

PROBE = f"""
import sys
import audiosocket_gw.provider as p
heavy = {GATEWAY_DEPS + ["aiohttp", "twilio"]!r}
loaded = [m for m in heavy if m in sys.modules]
assert not loaded, f"importing the provider library loaded {{loaded}}"
env = {{"TELEPHONY_PROVIDER": "rollout", "TELEPHONY_ROLLOUT_PERCENT": "25",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t",
        "AIGW_API_URL": "http://127.0.0.1:9"}}
r = p.get_telephony_provider(env)
a = p.get_async_telephony_provider({{**env, "TELEPHONY_PROVIDER": "asterisk"}})
assert r.name == "rollout" and a.name == "asterisk"
assert "twilio" in sys.modules  # the Twilio path was built with the SDK
loaded = [m for m in {GATEWAY_DEPS!r} if m in sys.modules]
assert not loaded, f"building the providers loaded {{loaded}}"
for m in {GATEWAY_DEPS!r}:
    try:
        __import__(m)
    except ImportError:
        pass
    else:
        raise AssertionError(f"{{m}} is installed in the light venv")
print("light import ok")
"""


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("light-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "twilio"], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.skip("pip could not install 'twilio' into a fresh venv (offline, no wheel "
                    f"cache?): {r.stderr.strip().splitlines()[-1:]}")
    return py


def test_the_provider_library_imports_without_the_gateway_dependencies(
        light_python: Path) -> None:
    r = subprocess.run([str(light_python), "-c", PROBE], capture_output=True, text=True,
                       timeout=120, cwd=str(REPO.parent),
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                            "PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0, r.stderr
    assert "light import ok" in r.stdout


def test_the_package_root_stays_import_light() -> None:
    code = ("import sys, audiosocket_gw; "
            f"print([m for m in {GATEWAY_DEPS + ['aiohttp']!r} if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout.strip() == "[]"
