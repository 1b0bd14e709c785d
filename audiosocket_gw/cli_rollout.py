"""``audiosocket-gw rollout set | status | rollback``: steer the migration from a shell.

Talks to a running gateway's HTTP API (``PUT``/``GET /v1/rollout``, see
:mod:`audiosocket_gw.rollout`):

- ``rollout set --percent N [--tenant T] [--did D]``: the Asterisk share of new calls,
  for everyone, one tenant or one number (the most specific rule wins);
- ``rollout status``: the rules, each tenant's and number's effective percentage, and
  the last hour's calls and failures on each path;
- ``rollout rollback [--tenant T]``: 0 % at once (narrower rules dropped); the next
  call takes the Twilio path.

``--url`` defaults to ``AIGW_API_URL``, else ``http://`` + the local ``--http``
default (127.0.0.1:9094); the token comes from ``--token`` or ``AIGW_API_TOKEN``.
``--json`` prints the gateway's document. Exit codes: 0 done, 1 the gateway refused
or could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .config import DEFAULT_HTTP

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``rollout`` command."""
    p = subparsers.add_parser("rollout", help="migration rollout: set, status, rollback",
                              description="Steer the share of calls that take the Asterisk "
                                          "path (a running gateway's /v1/rollout).")
    p.add_argument("--url", help="gateway HTTP API (env AIGW_API_URL, default "
                                 f"http://{DEFAULT_HTTP})")
    p.add_argument("--token", help="bearer token (env AIGW_API_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the gateway's JSON document")
    sub = p.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)
    s = sub.add_parser("set", help="set the Asterisk percentage")
    s.add_argument("--percent", type=int, required=True, metavar="N", help="0..100")
    s.add_argument("--tenant", help="only this tenant")
    s.add_argument("--did", help="only this number (E.164)")
    s.add_argument("--note", default="", help="why (kept with the rule)")
    sub.add_parser("status", help="rules, effective percentages, last hour per path")
    r = sub.add_parser("rollback", help="0 %% on Asterisk at once")
    r.add_argument("--tenant", help="only this tenant")
    r.add_argument("--note", default="", help="why (kept with the rule)")


def _request(url: str, token: str | None, method: str,
             body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/rollout", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def format_status(doc: dict[str, Any]) -> str:
    """The status document as a human-readable table."""
    lines = [f"global: {doc.get('percent', 0)} % on Asterisk"
             + ("" if doc.get("sip_host") else "  (AIGW_ROLLOUT_SIP_HOST unset: inbound "
                                                "stays on Twilio)")]
    eff = doc.get("effective") or {}
    for tenant, pct in sorted((eff.get("tenants") or {}).items()):
        lines.append(f"tenant {tenant}: {pct} %")
    for did, pct in sorted((eff.get("dids") or {}).items()):
        lines.append(f"  number {did}: {pct} %")
    rows = (doc.get("stats") or {}).get("rows") or []
    lines.append("last hour (tenant, number, path: calls / failures):")
    if not rows:
        lines.append("  no calls")
    for row in rows:
        lines.append(f"  {row['tenant']}\t{row['did']}\t{row['path']}\t{row['calls']} / "
                     f"{row['failures']}\t({row.get('percent', '?')} %)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``rollout ACTION``; the exit code."""
    url = (args.url or os.environ.get("AIGW_API_URL") or f"http://{DEFAULT_HTTP}").rstrip("/")
    token = args.token or os.environ.get("AIGW_API_TOKEN") or None
    if args.rollout_command == "set":
        if not 0 <= args.percent <= 100:
            print("audiosocket-gw rollout: --percent must be 0..100", file=sys.stderr)
            return 2
        body: dict[str, Any] | None = {"action": "set", "percent": args.percent,
                                       "note": args.note}
        for key in ("tenant", "did"):
            if getattr(args, key):
                body[key] = getattr(args, key)  # type: ignore[index]
        method = "PUT"
    elif args.rollout_command == "rollback":
        body = {"action": "rollback", "note": args.note}
        if args.tenant:
            body["tenant"] = args.tenant
        method = "PUT"
    else:
        body, method = None, "GET"
    try:
        status, doc = _request(url, token, method, body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"audiosocket-gw rollout: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        err = (doc.get("error") or {}) if isinstance(doc, dict) else {}
        print(f"audiosocket-gw rollout: {status} {err.get('message', '')}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0
