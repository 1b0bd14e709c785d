#!/usr/bin/env python3
"""Install / remove audiosocket-gw's Asterisk integration (``make deploy`` / ``undeploy``).

deploy:
  - ``$ASTERISK_ETC/extensions_aigw.conf``  (ours; replaced when it changes)
  - ``$AGI_DIR/aigw_route.py``               (ours; shebang -> the gateway's python)
  - ``$ASTERISK_ETC/pjsip_aigw.conf``, ``manager_aigw.conf``,
    ``$AIGW_ETC/aigw.env``, ``$AIGW_ETC/tenants.toml``  (samples: only if absent)
  - one ``#include extensions_aigw.conf`` line in ``$ASTERISK_ETC/extensions.conf``
    (added once; the file is created if missing)
  - ``$SYSTEMD_DIR/audiosocket-gw.service``  (ours)
  - then ``$ASTERISK [-C $ASTERISK_CONFIG] -rx 'dialplan reload'`` when installing
    into the live system (no DESTDIR) and that binary exists (``--asterisk``,
    ``--asterisk-config``: another build or instance than the ``asterisk`` on PATH),
    and ``systemctl daemon-reload`` only when the unit went into a directory systemd
    reads system units from (``SYSTEMD_UNIT_DIRS``, by default /etc/systemd/system):
    a unit staged anywhere else is not systemd's business.
undeploy: removes our files and the ``#include`` line, keeps the samples (they hold
your credentials) and reloads the same way.

Never overwrites a file it did not write without keeping ``<file>.bak`` (or
``.bak.N``): a manifest (``$AIGW_ETC/deploy-manifest.json``) records the checksum of
everything installed, so an unchanged file of ours is replaced silently and a file
someone edited is backed up first. Running twice changes nothing the second time.
``--dry-run`` prints the actions and touches nothing. Every path is prefixed with
``--destdir`` (staging trees, tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INCLUDE_LINE = "#include extensions_aigw.conf"
_INCLUDE_RE = re.compile(r'^\s*#include\s+"?extensions_aigw\.conf"?\s*(;.*)?$')
MANIFEST = "deploy-manifest.json"
SYSTEMD_UNIT_DIRS = ("/etc/systemd/system", "/usr/local/lib/systemd/system",
                     "/usr/lib/systemd/system", "/lib/systemd/system")
"""Where systemd looks for system units: ``daemon-reload`` only matters there."""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Deployer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.dry = args.dry_run
        self.destdir = args.destdir or ""
        self.actions: list[str] = []
        self.manifest_path = self.p(Path(args.aigw_etc) / MANIFEST)
        self.manifest: dict[str, str] = {}
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text())

    # -- helpers -----------------------------------------------------------------------

    def p(self, path: Path | str) -> Path:
        """``path`` under DESTDIR."""
        path = Path(path)
        return Path(self.destdir + str(path)) if self.destdir else path

    def say(self, msg: str) -> None:
        self.actions.append(msg)
        print(("[dry-run] " if self.dry else "") + msg)

    def backup(self, target: Path) -> Path:
        bak = target.with_name(target.name + ".bak")
        n = 1
        while bak.exists():
            bak = target.with_name(f"{target.name}.bak.{n}")
            n += 1
        self.say(f"backup {target} -> {bak}")
        if not self.dry:
            shutil.copy2(target, bak)
        return bak

    def install(self, data: bytes, target: Path, mode: int, *, sample: bool = False) -> None:
        key = str(target)
        if target.exists():
            current = target.read_bytes()
            if sample:
                print(f"keep {target} (exists; the sample is not installed over it)")
                return
            if current == data:
                self.manifest[key] = sha(data)
                return  # already up to date: nothing to say, nothing to do
            if self.manifest.get(key) != sha(current):
                self.backup(target)  # someone else's (or edited) file
        self.say(f"install {target} (mode {mode:o})")
        if not self.dry:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        if not sample:
            self.manifest[key] = sha(data)

    def remove(self, target: Path) -> None:
        key = str(target)
        if not target.exists():
            self.manifest.pop(key, None)
            return
        if self.manifest.get(key) != sha(target.read_bytes()):
            self.backup(target)  # edited since we installed it: keep a copy
        self.say(f"remove {target}")
        if not self.dry:
            target.unlink()
        self.manifest.pop(key, None)

    def save_manifest(self) -> None:
        if self.dry:
            return
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        if self.manifest:
            self.manifest_path.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        elif self.manifest_path.exists():
            self.manifest_path.unlink()

    def reload(self) -> None:
        """``systemctl daemon-reload`` (system unit dirs only), then the dialplan."""
        if os.path.normpath(self.a.systemd_dir) in SYSTEMD_UNIT_DIRS:
            self.run(["systemctl", "daemon-reload"], "systemd reload")
        else:
            self.say(f"skip systemd reload: {self.a.systemd_dir} is not a systemd unit "
                     "directory")
        config = ["-C", self.a.asterisk_config] if self.a.asterisk_config else []
        self.run([self.a.asterisk, *config, "-rx", "dialplan reload"], "dialplan reload")

    def run(self, argv: list[str], why: str) -> None:
        if self.destdir:
            self.say(f"skip {why}: installing under DESTDIR={self.destdir}")
            return
        if shutil.which(argv[0]) is None:
            self.say(f"skip {why}: {argv[0]} not found")
            return
        self.say("run " + " ".join(argv))
        if not self.dry:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                print(f"warning: {' '.join(argv)} failed: {res.stderr.strip()}", file=sys.stderr)

    # -- content -----------------------------------------------------------------------

    def agi_script(self) -> bytes:
        text = (ROOT / "agi" / "aigw_route.py").read_text()
        body = text.split("\n", 1)[1] if text.startswith("#!") else text
        return f"#!{self.a.python}\n{body}".encode()

    def unit(self) -> bytes:
        text = (ROOT / "systemd" / "audiosocket-gw.service").read_text()
        for key, value in {
            "@VENV@": str(Path(self.a.python).parent.parent),
            "@AIGW_ETC@": self.a.aigw_etc,
            "@STATE_DIR@": self.a.state_dir,
            "@USER@": self.a.user,
        }.items():
            text = text.replace(key, value)
        return text.encode()

    # -- the two targets ---------------------------------------------------------------

    def deploy(self) -> None:
        a = self.a
        etc, agi, aigw_etc = Path(a.asterisk_etc), Path(a.agi_dir), Path(a.aigw_etc)
        dp = ROOT / "dialplan"
        self.install((dp / "extensions_aigw.conf").read_bytes(),
                     self.p(etc / "extensions_aigw.conf"), 0o644)
        self.install(self.agi_script(), self.p(agi / "aigw_route.py"), 0o755)
        self.install((dp / "pjsip_trunk.sample.conf").read_bytes(),
                     self.p(etc / "pjsip_aigw.conf"), 0o640, sample=True)
        self.install((dp / "manager_aigw.sample.conf").read_bytes(),
                     self.p(etc / "manager_aigw.conf"), 0o640, sample=True)
        self.install((ROOT / ".env.example").read_bytes(),
                     self.p(aigw_etc / "aigw.env"), 0o600, sample=True)
        self.install((dp / "tenants.sample.toml").read_bytes(),
                     self.p(aigw_etc / "tenants.toml"), 0o644, sample=True)
        self.install(self.unit(), self.p(Path(a.systemd_dir) / "audiosocket-gw.service"), 0o644)
        self.add_include(self.p(etc / "extensions.conf"))
        self.save_manifest()
        self.reload()
        if not self.actions:
            print("deploy: everything already up to date")

    def undeploy(self) -> None:
        a = self.a
        etc = Path(a.asterisk_etc)
        self.remove_include(self.p(etc / "extensions.conf"))
        self.remove(self.p(etc / "extensions_aigw.conf"))
        self.remove(self.p(Path(a.agi_dir) / "aigw_route.py"))
        self.remove(self.p(Path(a.systemd_dir) / "audiosocket-gw.service"))
        self.save_manifest()
        for sample in (etc / "pjsip_aigw.conf", etc / "manager_aigw.conf",
                       Path(a.aigw_etc) / "aigw.env", Path(a.aigw_etc) / "tenants.toml"):
            if self.p(sample).exists():
                print(f"kept {self.p(sample)} (your settings; remove it by hand if unused)")
        self.reload()

    def add_include(self, conf: Path) -> None:
        if conf.exists():
            text = conf.read_text()
            if any(_INCLUDE_RE.match(line) for line in text.splitlines()):
                return
            self.backup(conf)
            sep = "" if text.endswith("\n") or not text else "\n"
            new = f"{text}{sep}\n; audiosocket-gw (make deploy)\n{INCLUDE_LINE}\n"
        else:
            new = f"; audiosocket-gw (make deploy)\n{INCLUDE_LINE}\n"
        self.say(f"add '{INCLUDE_LINE}' to {conf}")
        if not self.dry:
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(new)

    def remove_include(self, conf: Path) -> None:
        if not conf.exists():
            return
        lines = conf.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines if not _INCLUDE_RE.match(ln.rstrip("\n"))
                and ln.strip() != "; audiosocket-gw (make deploy)"]
        if keep == lines:
            return
        self.backup(conf)
        self.say(f"remove '{INCLUDE_LINE}' from {conf}")
        if not self.dry:
            conf.write_text("".join(keep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("action", choices=["deploy", "undeploy"])
    ap.add_argument("--destdir", default=os.environ.get("DESTDIR", ""))
    ap.add_argument("--asterisk-etc", default="/etc/asterisk")
    ap.add_argument("--agi-dir", default="/var/lib/asterisk/agi-bin")
    ap.add_argument("--aigw-etc", default="/etc/audiosocket-gw")
    ap.add_argument("--state-dir", default="/var/lib/audiosocket-gw")
    ap.add_argument("--systemd-dir", default="/etc/systemd/system")
    ap.add_argument("--python", default=sys.executable,
                    help="the gateway virtualenv's python (AGI shebang, systemd unit)")
    ap.add_argument("--user", default="asterisk", help="system user the gateway runs as")
    ap.add_argument("--asterisk", default="asterisk",
                    help="the asterisk binary used for 'dialplan reload' (name or path)")
    ap.add_argument("--asterisk-config", default="",
                    help="asterisk.conf of the instance to reload (passed as -C)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    args.destdir = args.destdir.rstrip("/")
    for name in ("asterisk_etc", "agi_dir", "aigw_etc", "state_dir", "systemd_dir", "python"):
        if not os.path.isabs(getattr(args, name)):
            ap.error(f"--{name.replace('_', '-')} must be an absolute path")
    if args.asterisk_config and not os.path.isabs(args.asterisk_config):
        ap.error("--asterisk-config must be an absolute path")
    d = Deployer(args)
    d.deploy() if args.action == "deploy" else d.undeploy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
