"""``audiosocket-gw call``: place outbound calls through a running gateway's HTTP API.

One call: ``audiosocket-gw call TO --from FROM --tenant T [--agent A]``. Bulk:
``audiosocket-gw call --csv FILE --rate N`` (columns ``to`` and optionally ``from``,
``tenant``, ``agent``; the flags fill what a row leaves empty). Requests are spread
at ``--rate`` per second; a 429 (tenant limit) or 503 is retried after its
``Retry-After`` until ``--place-timeout``; then the command waits for every call's
final status and prints one line per number, a summary table and a summary line.
Exit code 1 if any call could not be placed, 0 otherwise. The token comes from
``--token`` or ``AIGW_API_TOKEN``.

Progress goes to stderr while it runs: a progress bar on a terminal, a plain line
every few seconds otherwise. Bulk runs keep a state file next to the CSV
(``FILE.state.jsonl``: one JSON line per number as its call ends); ``--resume``
skips the numbers (per tenant) whose call already ``completed`` there and appends
to it; without ``--resume`` the state file starts afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from .config import DEFAULT_HTTP
from .progress import Reporter, summary_table

_FINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


@dataclass
class Outcome:
    to: str
    id: str | None = None
    status: str = "not-placed"
    answered_by: str | None = None
    error: str | None = None


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``call`` subcommand."""
    p = subparsers.add_parser("call", help="place outbound calls via the gateway API",
                              description="Place outbound calls through a running gateway.")
    p.add_argument("to", nargs="?", help="number to call (E.164)")
    p.add_argument("--from", dest="from_", default="", metavar="FROM", help="caller id")
    p.add_argument("--tenant", help="tenant id")
    p.add_argument("--agent", help="agent (default: the tenant's first)")
    p.add_argument("--csv", metavar="FILE", help="bulk: CSV with a 'to' column")
    p.add_argument("--rate", type=float, default=1.0, metavar="N",
                   help="bulk: calls placed per second (default 1)")
    p.add_argument("--api", default=f"http://{DEFAULT_HTTP}", metavar="URL",
                   help=f"gateway HTTP address (default http://{DEFAULT_HTTP})")
    p.add_argument("--token", help="bearer token (env AIGW_API_TOKEN)")
    p.add_argument("--wait", type=float, default=300.0, metavar="S",
                   help="seconds to wait for final statuses (default 300)")
    p.add_argument("--place-timeout", type=float, default=120.0, metavar="S",
                   help="seconds to keep retrying a call refused with 429/503")
    p.add_argument("--no-wait", action="store_true", help="do not wait for final statuses")
    p.add_argument("--resume", action="store_true",
                   help="bulk: skip numbers already completed in FILE.state.jsonl")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="S",
                   help=argparse.SUPPRESS)


def _rows(args: argparse.Namespace) -> list[dict[str, str]]:
    if args.csv:
        with open(args.csv, newline="") as f:
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k}
                    for r in csv.DictReader(f)]
    else:
        rows = [{"to": args.to or ""}]
    out = []
    for r in rows:
        out.append({
            "to": r.get("to", ""),
            "from": r.get("from") or args.from_ or "",
            "tenant": r.get("tenant") or args.tenant or "",
            **({"agent": r.get("agent") or args.agent} if (r.get("agent") or args.agent)
               else {}),
        })
    return out


async def _place(s: aiohttp.ClientSession, api: str, body: dict[str, str],
                 place_timeout: float) -> Outcome:
    res = Outcome(to=body["to"])
    deadline = time.monotonic() + place_timeout
    while True:
        try:
            async with s.post(f"{api}/v1/calls", json=body) as r:
                data: Any = await r.json(content_type=None)
                if r.status == 201:
                    res.id, res.status = data["id"], data["status"]
                    return res
                retry = r.status in (429, 503)
                res.error = f"{r.status} {data.get('error', {}).get('message', '')}"
                wait = float(r.headers.get("Retry-After", "1"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            res.error, retry, wait = f"request failed: {exc}", False, 0.0
        if not retry or time.monotonic() + wait > deadline:
            return res
        await asyncio.sleep(wait)


async def _follow(s: aiohttp.ClientSession, api: str, res: Outcome, within: float) -> None:
    deadline = time.monotonic() + within
    while res.id and res.status not in _FINAL and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        try:
            async with s.get(f"{api}/v1/calls/{res.id}") as r:
                if r.status == 200:
                    data = await r.json()
                    res.status, res.answered_by = data["status"], data.get("answered_by")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue


def state_path(csv_path: str) -> Path:
    """The state file of a bulk run: next to the CSV."""
    return Path(csv_path + ".state.jsonl")


def completed_numbers(path: Path) -> set[tuple[str, str]]:
    """(to, tenant) of every number whose last recorded call completed."""
    last: dict[tuple[str, str], str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            last[(str(rec["to"]), str(rec["tenant"]))] = str(rec["status"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    return {k for k, status in last.items() if status == "completed"}


def _open_state(args: argparse.Namespace, rows: list[dict[str, str]]
                ) -> tuple[list[dict[str, str]], IO[str] | None, int]:
    """The rows still to call, the open state file (bulk runs) and how many were
    skipped as already completed (``--resume``)."""
    if not args.csv:
        return rows, None, 0
    path = state_path(args.csv)
    skipped = 0
    if args.resume:
        done = completed_numbers(path)
        kept = [r for r in rows if (r["to"], r["tenant"]) not in done]
        skipped = len(rows) - len(kept)
        rows = kept
        if skipped:
            print(f"resume: skipping {skipped} number(s) already completed ({path.name})")
    return rows, open(path, "a" if args.resume else "w", encoding="utf-8"), skipped  # noqa: SIM115


async def _run(args: argparse.Namespace) -> int:
    rows = _rows(args)
    if not rows or any(not r["to"] or not r["tenant"] for r in rows):
        print("error: every call needs a number (TO or a CSV 'to' column) and --tenant")
        return 2
    rows, state, skipped = await asyncio.to_thread(_open_state, args, rows)
    token = args.token or os.environ.get("AIGW_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = args.api.rstrip("/")
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    timeout = aiohttp.ClientTimeout(total=30)
    counts: dict[str, int] = {}

    try:
        with Reporter(len(rows), "calls", every_s=args.progress_every) as progress:

            async def one(s: aiohttp.ClientSession, body: dict[str, str]) -> Outcome:
                res = await _place(s, api, body, args.place_timeout)
                if not args.no_wait:
                    await _follow(s, api, res, args.wait)
                counts[res.status] = counts.get(res.status, 0) + 1
                if state is not None:
                    state.write(json.dumps({"to": res.to, "tenant": body["tenant"],
                                            "id": res.id, "status": res.status,
                                            "at": time.time()}) + "\n")
                    state.flush()
                progress.advance(note=", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
                return res

            async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
                tasks = []
                for i, body in enumerate(rows):
                    if i and interval:
                        await asyncio.sleep(interval)
                    tasks.append(asyncio.ensure_future(one(s, body)))
                    progress.update()
                results = list(await asyncio.gather(*tasks))
    finally:
        if state is not None:
            state.close()
    for r in results:
        extra = f" answered_by={r.answered_by}" if r.answered_by else ""
        err = f" ({r.error})" if r.id is None and r.error else ""
        print(f"{r.to}\t{r.status}\t{r.id or '-'}{extra}{err}")
    if len(results) > 1 or skipped:
        table = [(k, v, f"{100.0 * v / len(results):.0f}%") for k, v in sorted(counts.items())]
        if skipped:
            table.append(("skipped (resume)", skipped, ""))
        summary_table("calls by final status", ["status", "calls", "share"], table)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(results)} calls: {summary}" if results else "0 calls")
    return 1 if any(r.id is None for r in results) else 0


def run(args: argparse.Namespace) -> int:
    """Run the ``call`` command; the exit code."""
    return asyncio.run(_run(args))
