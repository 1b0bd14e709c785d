"""``make deploy`` / ``make undeploy`` into a temporary DESTDIR: idempotent, backs up
what it did not write, dry-run touches nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from audiosocket_gw.routing import DEPLOYMENT_VARIABLES
from audiosocket_gw.tenants import load_tenants

ROOT = Path(__file__).resolve().parent.parent
PY = "/opt/aigw/.venv/bin/python"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(dest: Path, target: str, *extra: str, makefile: str = "deploy.mk") -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "MAKEFLAGS", "MFLAGS")}
    res = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "-f", makefile, target, f"DESTDIR={dest}",
         f"GATEWAY_PYTHON={PY}", *extra],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_deploy_twice_then_undeploy(tmp_path):
    dest = tmp_path / "root"
    etc = dest / "etc" / "asterisk"
    etc.mkdir(parents=True)
    user_ext = "[general]\nstatic=yes\n\n[from-internal]\nexten => 100,1,Dial(PJSIP/100)\n"
    (etc / "extensions.conf").write_text(user_ext)
    (etc / "manager_aigw.conf").write_text("; mine, with my secret\n")
    (etc / "extensions_aigw.conf").write_text("; an old hand-made copy\n")

    out1 = make(dest, "deploy")
    agi = dest / "var/lib/asterisk/agi-bin/aigw_route.py"
    assert agi.read_text().splitlines()[0] == f"#!{PY}"
    assert os.stat(agi).st_mode & 0o777 == 0o755
    assert (etc / "extensions_aigw.conf").read_bytes() == \
        (ROOT / "dialplan/extensions_aigw.conf").read_bytes()
    assert (etc / "extensions_aigw.conf.bak").read_text() == "; an old hand-made copy\n"
    ext = (etc / "extensions.conf").read_text()
    assert ext.startswith(user_ext) and ext.count("#include extensions_aigw.conf") == 1
    assert (etc / "extensions.conf.bak").read_text() == user_ext
    assert (etc / "manager_aigw.conf").read_text() == "; mine, with my secret\n"  # kept
    assert "[aigw-trunk]" in (etc / "pjsip_aigw.conf").read_text()
    env_file = dest / "etc/audiosocket-gw/aigw.env"
    assert os.stat(env_file).st_mode & 0o777 == 0o600
    assert load_tenants(dest / "etc/audiosocket-gw/tenants.toml").lookup_did("+15551230000")
    unit = (dest / "etc/systemd/system/audiosocket-gw.service").read_text()
    assert "ExecStart=/opt/aigw/.venv/bin/audiosocket-gw serve" in unit and "@" not in unit
    assert "skip dialplan reload" in out1

    snapshot = tree(dest)
    out2 = make(dest, "deploy")
    assert tree(dest) == snapshot, "second deploy changed something"
    assert not [ln for ln in out2.splitlines() if ln.startswith(("install", "backup", "add"))]

    # Someone edits our include; undeploy keeps a copy of the edit.
    (etc / "extensions_aigw.conf").write_text("; edited\n")
    make(dest, "undeploy")
    assert not agi.exists() and not (etc / "extensions_aigw.conf").exists()
    assert not (dest / "etc/systemd/system/audiosocket-gw.service").exists()
    assert "; edited\n" in [p.read_text() for p in etc.glob("extensions_aigw.conf.bak*")]
    assert "#include extensions_aigw.conf" not in (etc / "extensions.conf").read_text()
    assert (etc / "extensions.conf").read_text().strip() == user_ext.strip()
    assert (etc / "pjsip_aigw.conf").exists() and env_file.exists()  # settings kept
    assert not (dest / "etc/audiosocket-gw/deploy-manifest.json").exists()

    # Undeploy again: nothing left to do, nothing changes.
    snapshot = tree(dest)
    make(dest, "undeploy")
    assert tree(dest) == snapshot


def test_dry_run_touches_nothing(tmp_path):
    dest = tmp_path / "root"
    dest.mkdir()
    out = make(dest, "deploy", "DRY_RUN=1")
    assert tree(dest) == {}
    assert "[dry-run] install" in out and "[dry-run] add '#include" in out


def test_main_makefile_includes_deploy(tmp_path):
    dest = tmp_path / "root"
    dest.mkdir()
    out = make(dest, "deploy", "DRY_RUN=1", makefile="Makefile")
    assert "extensions_aigw.conf" in out and tree(dest) == {}


def test_installed_agi_script_runs(tmp_path):
    """The installed copy (new shebang) is still a working script."""
    dest = tmp_path / "root"
    res = subprocess.run(
        ["python3", str(ROOT / "scripts/deploy.py"), "deploy", "--destdir", str(dest),
         "--python", str(Path(os.sys.executable))],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr
    agi = dest / "var/lib/asterisk/agi-bin/aigw_route.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    run = subprocess.run(
        [str(agi)], input="agi_extension: +15551230000\nagi_arg_1: http://127.0.0.1:1/x\n\n"
        + "200 result=1\n" * 8, capture_output=True, text=True, timeout=30, env=env,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == 'SET VARIABLE AIGW_STATUS "unavailable"'


# -- live installs (no DESTDIR): which reloads run, with which binary ----------------------


def fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """A bin dir with recording ``systemctl`` and ``my-asterisk`` stand-ins, and their log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "tools.log"
    bin_dir.mkdir()
    for name in ("systemctl", "my-asterisk"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        tool.chmod(0o755)
    return bin_dir, log


def make_live(tmp_path: Path, bin_dir: Path, target: str, *extra: str) -> str:
    """``make -f deploy.mk <target>`` into the real root, every path under ``tmp_path``."""
    root = tmp_path / "live"
    env = {k: v for k, v in os.environ.items() if k not in ("DESTDIR", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    res = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "-f", "deploy.mk", target, "DESTDIR=",
         f"GATEWAY_PYTHON={PY}", f"ASTERISK_ETC={root}/etc/asterisk",
         f"AGI_DIR={root}/agi-bin", f"AIGW_ETC={root}/etc/aigw",
         f"AIGW_STATE={root}/state", *extra],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_live_deploy_reloads_the_named_asterisk_and_skips_daemon_reload_elsewhere(tmp_path):
    bin_dir, log = fake_tools(tmp_path)
    units = tmp_path / "live" / "units"
    conf = tmp_path / "other" / "asterisk.conf"
    extra = (f"SYSTEMD_DIR={units}", f"ASTERISK={bin_dir}/my-asterisk",
             f"ASTERISK_CONFIG={conf}")
    out = make_live(tmp_path, bin_dir, "deploy", *extra)
    assert (units / "audiosocket-gw.service").exists()
    assert log.read_text().splitlines() == [f"my-asterisk -C {conf} -rx dialplan reload"]
    assert "skip systemd reload" in out
    log.unlink()
    make_live(tmp_path, bin_dir, "undeploy", *extra)
    assert not (units / "audiosocket-gw.service").exists()
    assert log.read_text().splitlines() == [f"my-asterisk -C {conf} -rx dialplan reload"]


def test_live_deploy_without_asterisk_config_passes_no_dash_c(tmp_path):
    bin_dir, log = fake_tools(tmp_path)
    make_live(tmp_path, bin_dir, "deploy", f"SYSTEMD_DIR={tmp_path}/live/units",
              f"ASTERISK={bin_dir}/my-asterisk")
    assert log.read_text().splitlines() == ["my-asterisk -rx dialplan reload"]


def test_daemon_reload_when_the_unit_goes_to_the_system_unit_dir(tmp_path):
    """Default SYSTEMD_DIR (dry run: /etc/systemd/system is only read, never written)."""
    bin_dir, log = fake_tools(tmp_path)
    out = make_live(tmp_path, bin_dir, "deploy", "DRY_RUN=1", f"ASTERISK={bin_dir}/my-asterisk")
    assert "[dry-run] run systemctl daemon-reload" in out
    assert f"[dry-run] run {bin_dir}/my-asterisk -rx dialplan reload" in out
    assert not log.exists() and not (tmp_path / "live").exists()


def test_deploy_doc_names_every_make_variable_and_dialplan_global():
    """docs/DEPLOY.md documents each ``VAR ?=`` of deploy.mk and each optional global."""
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    names = re.findall(r"^([A-Z_]+)\s*\?=", (ROOT / "deploy.mk").read_text(), re.MULTILINE)
    assert {"GATEWAY_PYTHON", "AIGW_STATE", "ASTERISK", "ASTERISK_CONFIG"} <= set(names)
    internal = {"DEPLOY_PY"}
    missing = [n for n in [*names, *DEPLOYMENT_VARIABLES, "AIGW_DIAL_TEMPLATE",
                           "AIGW_OUTBOUND_CONTEXT"]
               if n not in internal and f"`{n}" not in doc]
    assert missing == []


def test_systemd_unit_sets_a_restrictive_umask():
    unit = (Path(__file__).resolve().parent.parent / "systemd" / "audiosocket-gw.service")
    service = unit.read_text().split("[Service]", 1)[1].split("\n[", 1)[0]
    assert "UMask=0027" in [line.strip() for line in service.splitlines()]
