"""``audiosocket-gw numbers import FILE``: move Twilio phone numbers into the DID map.

Why: a team leaving Twilio has its numbers' routing in Twilio's IncomingPhoneNumbers
resource (each number's ``voice_url`` webhook and ``status_callback``). This command reads
that export and writes the equivalent entries into our tenants TOML (see
:mod:`audiosocket_gw.tenants`), so each ported number reaches the same app through the
``twilio-stream`` backend, whose voice-webhook emulation POSTs to the same ``voice_url``
and follows the TwiML it returns.

Input: the JSON of ``GET /2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json`` (the API
list shape ``{"incoming_phone_numbers": [...]}``) or a bare list of such objects (the
``twilio phone-numbers:list -o json`` shape, whose camelCase keys are read too). Fields
used: ``phone_number``, ``friendly_name``, ``voice_url``, ``voice_method``,
``status_callback``, ``status_callback_method``; optional ``sid``, ``account_sid``,
``voice_application_sid``, ``trunk_sid``, ``voice_fallback_url`` (only to explain skips
and notes).

Output, merged into the file (everything already in it is kept byte for byte; new tables
are appended):

* one agent per distinct (``voice_url``, ``status_callback``, ``account_sid``), backend
  ``twilio-stream``, with ``voice_url`` and ``status_callback`` (an existing agent of the
  tenant with the same routing is reused instead). ``account_sid`` goes to the new
  tenant's ``twilio_account_sid``, or to the agent's ``extra`` when it differs from its
  tenant's;
* one ``[numbers."+E164"]`` table per number, ``agent = ...``, with the friendly name and
  the number's SID in a comment above it (comments are sanitised: a hostile friendly name
  cannot break the file);
* the tenant (``--tenant``, or the file's only tenant, or ``default``) when it is new, and
  ``default_agent`` at the top of the file when the loader would otherwise need it.

The agent's ``voice_url`` is also each number's *original* voice URL for the migration
rollout: while the numbers still live at Twilio with their Voice URL pointing at the
gateway's ``POST /v1/rollout/voice``, the calls that stay on Twilio are
``<Redirect>``ed there (:mod:`audiosocket_gw.rollout`).

``status_events`` stay at the default (``completed``): a number-level ``StatusCallback``
at Twilio only ever receives the completed event. The apps' ``X-Twilio-Signature`` checks
need the account's auth token in ``AIGW_TWILIO_AUTH_TOKEN`` (never written to the file).

Rules: idempotent (a second run finds everything in place and changes nothing); a number
already routed elsewhere is reported and left alone unless ``--force`` (then its table is
rewritten in place); ``FILE.bak`` is written before the file changes, and the new text is
validated with :func:`~audiosocket_gw.tenants.loads_tenants` (and every imported number
looked up) before it replaces the file atomically. Every number gets one report line:
``added``, ``updated``, ``unchanged`` or ``skipped`` with the reason (invalid E.164,
missing or non-http(s) ``voice_url``, TwiML App or SIP trunk routing, duplicate in the
export, routed elsewhere), plus notes that do not block the import (a non-POST
``voice_method``: the gateway POSTs, as Twilio does by default).

Exit codes: 0 every number is in place, 1 some were skipped (the rest were imported),
2 nothing done (bad arguments, unreadable or invalid input, a file that would not load).

The planning (:func:`parse_export`, :func:`plan_import`) is pure: text in, text and report
out; :func:`run` does the file I/O.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from .tenants import (
    Agent,
    ConfigError,
    TenantsConfig,
    loads_tenants,
    normalize_e164,
    tenants_from_dict,
)
from .twilio.ids import ACCOUNT_PREFIX, is_sid

__all__ = [
    "ExportEntry",
    "ImportPlan",
    "NumberResult",
    "NumbersImportError",
    "add_parser",
    "main",
    "parse_export",
    "plan_import",
    "run",
    "toml_string",
]

Action = Literal["added", "updated", "unchanged", "skipped"]

MAX_EXPORT_BYTES: Final = 64 * 1024 * 1024
DEFAULT_TENANT: Final = "default"
_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEADER_RE: Final = re.compile(r"^\s*\[")
_NUMBER_HEADER_RE: Final = re.compile(
    r"""^\s*\[\s*numbers\s*\.\s*(?P<key>"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_-]+)\s*\]\s*(?:\#.*)?$"""
)
_NUMBER_KEY_LINE_RE: Final = re.compile(r"""^\s*(?:agent|tenant|"agent"|"tenant")\s*=""")

# snake_case (REST API) and camelCase (twilio CLI) spellings of each field we read.
_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "phone_number": ("phone_number", "phoneNumber"),
    "friendly_name": ("friendly_name", "friendlyName"),
    "voice_url": ("voice_url", "voiceUrl"),
    "voice_method": ("voice_method", "voiceMethod"),
    "status_callback": ("status_callback", "statusCallback"),
    "status_callback_method": ("status_callback_method", "statusCallbackMethod"),
    "sid": ("sid", "sid"),
    "account_sid": ("account_sid", "accountSid"),
    "voice_application_sid": ("voice_application_sid", "voiceApplicationSid"),
    "trunk_sid": ("trunk_sid", "trunkSid"),
    "voice_fallback_url": ("voice_fallback_url", "voiceFallbackUrl"),
}


class NumbersImportError(ValueError):
    """The import cannot be done at all (bad export, bad tenants file, bad arguments)."""


# ---------------------------------------------------------------------------
# Reading the export


@dataclass(frozen=True)
class ExportEntry:
    """One element of the export, its fields as strings (None when absent or empty).

    ``problems`` lists fields that were present with a non-string value.
    """

    index: int
    phone_number: str | None = None
    friendly_name: str | None = None
    voice_url: str | None = None
    voice_method: str | None = None
    status_callback: str | None = None
    status_callback_method: str | None = None
    sid: str | None = None
    account_sid: str | None = None
    voice_application_sid: str | None = None
    trunk_sid: str | None = None
    voice_fallback_url: str | None = None
    problems: tuple[str, ...] = ()
    is_object: bool = True

    def normalized_note(self, e164: str) -> str:
        """A note when ``phone_number`` was not already written as ``e164``."""
        if self.phone_number is not None and self.phone_number != e164:
            return f"phone_number {_one_line(self.phone_number, 24)!r} read as {e164}"
        return ""


def parse_export(data: object) -> tuple[list[ExportEntry], list[str]]:
    """The entries of an IncomingPhoneNumbers export (already JSON-decoded), and warnings.

    Accepts ``{"incoming_phone_numbers": [...]}`` (warns when ``next_page_uri`` says the
    export is one page of several) or a bare list. Raises :class:`NumbersImportError`
    for any other shape.
    """
    warnings: list[str] = []
    items: object
    if isinstance(data, dict):
        items = data.get("incoming_phone_numbers", data.get("incomingPhoneNumbers"))
        if items is None:
            raise NumbersImportError(
                "not an IncomingPhoneNumbers export: no 'incoming_phone_numbers' list")
        if data.get("next_page_uri") or data.get("nextPageUri"):
            warnings.append("the export is one page of several (next_page_uri is set): "
                            "numbers on the other pages are not imported")
    else:
        items = data
    if not isinstance(items, list):
        raise NumbersImportError("not an IncomingPhoneNumbers export: expected a list")
    entries: list[ExportEntry] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            entries.append(ExportEntry(index=i, is_object=False))
            continue
        values: dict[str, str | None] = {}
        problems: list[str] = []
        for name, spellings in _FIELDS.items():
            raw = next((item[k] for k in spellings if item.get(k) is not None), None)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                values[name] = None
            elif isinstance(raw, str):
                values[name] = raw.strip()
            else:
                values[name] = None
                problems.append(name)
        v = values.get
        entries.append(ExportEntry(
            index=i, problems=tuple(problems),
            phone_number=v("phone_number"), friendly_name=v("friendly_name"),
            voice_url=v("voice_url"), voice_method=v("voice_method"),
            status_callback=v("status_callback"),
            status_callback_method=v("status_callback_method"),
            sid=v("sid"), account_sid=v("account_sid"),
            voice_application_sid=v("voice_application_sid"), trunk_sid=v("trunk_sid"),
            voice_fallback_url=v("voice_fallback_url"),
        ))
    return entries, warnings


# ---------------------------------------------------------------------------
# TOML text


def toml_string(s: str) -> str:
    """``s`` as a TOML basic string, quotes included; safe for any input.

    Escapes quote, backslash and every control character; lone surrogates (which JSON can
    carry but UTF-8 cannot) become U+FFFD.
    """
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04X}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\uFFFD")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _one_line(s: str, limit: int = 120) -> str:
    """``s`` fit for a comment or a report line: no control characters, one line."""
    cleaned = "".join(
        " " if (ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF
                or c in "\u2028\u2029\x85") else c
        for c in s
    )
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host and no whitespace or control chars."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# ---------------------------------------------------------------------------
# Planning (pure)


@dataclass(frozen=True)
class NumberResult:
    """What the import did with one export entry."""

    number: str
    """E.164 when valid, else the entry's phone_number as given (one line) or ``#index``."""
    action: Action
    agent: str | None = None
    reason: str = ""
    """Why it was skipped (or what was replaced, for ``updated``)."""
    notes: tuple[str, ...] = ()
    """Non-blocking remarks (non-POST methods, ignored fields)."""
    index: int = -1
    """Position of the entry in the export (results are reported in that order)."""

    def line(self) -> str:
        """One human-readable report line."""
        head = f"{self.number:<16} {self.action:<9}"
        parts = [head]
        if self.agent is not None:
            parts.append(f"-> agent {self.agent}")
        if self.reason:
            parts.append(f"({self.reason})")
        text = " ".join(parts)
        for note in self.notes:
            text += f"\n{'':<26}note: {note}"
        return text


@dataclass
class ImportPlan:
    """The outcome of :func:`plan_import`: the new file text and the report."""

    old_text: str
    text: str
    results: list[NumberResult] = field(default_factory=list)
    agents_added: list[str] = field(default_factory=list)
    tenant: str = DEFAULT_TENANT
    tenant_added: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the file text would change."""
        return self.text != self.old_text

    def count(self, action: Action) -> int:
        """How many numbers got ``action``."""
        return sum(1 for r in self.results if r.action == action)

    def report(self) -> str:
        """Every number's line, the file-level notes and a summary line."""
        lines = [r.line() for r in self.results]
        lines += [f"note: {n}" for n in self.notes]
        if self.tenant_added:
            lines.append(f"tenant added: {self.tenant}")
        if self.agents_added:
            lines.append("agents added: " + ", ".join(self.agents_added))
        lines.append(
            f"{self.count('added')} added, {self.count('updated')} updated, "
            f"{self.count('unchanged')} unchanged, {self.count('skipped')} skipped"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Route:
    voice_url: str
    status_callback: str | None
    account_sid: str | None


def _agent_matches(agent: Agent, route: _Route, tenant: str,
                   tenant_sid: str | None) -> bool:
    if agent.backend != "twilio-stream" or agent.tenant != tenant or agent.stream_url:
        return False
    if agent.voice_url != route.voice_url or agent.status_callback != route.status_callback:
        return False
    effective = agent.extra.get("account_sid") or tenant_sid
    return route.account_sid is None or route.account_sid == effective


def _agent_name(route: _Route, taken: set[str]) -> str:
    host = (urlsplit(route.voice_url).hostname or "app").lower()
    base = "twilio-" + (re.sub(r"[^a-z0-9-]+", "-", host).strip("-") or "app")[:40]
    if base not in taken:
        return base
    key = "\n".join([route.voice_url, route.status_callback or "", route.account_sid or ""])
    hashed = f"{base}-{hashlib.sha256(key.encode('utf-8', 'replace')).hexdigest()[:8]}"
    name, n = hashed, 2
    while name in taken:
        name = f"{hashed}-{n}"
        n += 1
    return name


def _decode_key(token: str) -> str | None:
    """The key a TOML key token (bare, basic or literal string) stands for."""
    try:
        return str(next(iter(tomllib.loads(f"{token} = 0"))))
    except (tomllib.TOMLDecodeError, StopIteration):
        return None


def _rewrite_number(lines: list[str], raw_key: str, agent: str, nl: str) -> bool:
    """Point the ``[numbers.<raw_key>]`` table at ``agent`` in place (``--force``).

    Drops its ``agent``/``tenant`` lines (the only keys a number table may have) and puts
    ``agent = ...`` right under the header; comments and blank lines stay. False when no
    such table header exists (e.g. the number is an inline table): left to the user.
    """
    for i, line in enumerate(lines):
        m = _NUMBER_HEADER_RE.match(line.rstrip("\r\n"))
        if m is None or _decode_key(m.group("key")) != raw_key:
            continue
        end = i + 1
        while end < len(lines) and not _HEADER_RE.match(lines[end]):
            end += 1
        body = [x for x in lines[i + 1 : end] if not _NUMBER_KEY_LINE_RE.match(x)]
        lines[i + 1 : end] = [f"agent = {toml_string(agent)}{nl}", *body]
        return True
    return False


def plan_import(
    existing_text: str,
    entries: list[ExportEntry],
    *,
    tenant: str | None = None,
    force: bool = False,
    source: str = "<tenants>",
) -> ImportPlan:
    """Merge ``entries`` into the tenants TOML ``existing_text`` (may be empty).

    Pure: returns the new text (validated: it loads, and every imported number looks up
    to an agent with the export's URLs) and the per-number report. Raises
    :class:`NumbersImportError` when the existing text is not a valid tenants file, the
    tenant id is invalid or ambiguous, or the merge cannot be expressed in this file.
    """
    data: dict[str, Any] = {}
    cfg: TenantsConfig | None = None
    if existing_text.strip():
        try:
            data = tomllib.loads(existing_text)
        except tomllib.TOMLDecodeError as exc:
            raise NumbersImportError(f"{source}: invalid TOML: {exc}") from None
        if data:
            try:
                cfg = tenants_from_dict(data, source=source)
            except ConfigError as exc:
                raise NumbersImportError(f"{exc} (fix the file before importing)") from None
    tenants = dict(cfg.tenants) if cfg else {}
    agents = dict(cfg.agents) if cfg else {}
    numbers = dict(cfg.numbers) if cfg else {}
    raw_number_keys = {normalize_e164(k): k for k in (data.get("numbers") or {})}

    if tenant is not None:
        if not _ID_RE.fullmatch(tenant):
            raise NumbersImportError(
                f"tenant id {tenant!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        tid = tenant
    elif len(tenants) == 1:
        tid = next(iter(tenants))
    elif not tenants:
        tid = DEFAULT_TENANT
    else:
        raise NumbersImportError(
            f"{source} has several tenants ({', '.join(sorted(tenants))}): pass --tenant")
    tenant_exists = tid in tenants
    tenant_sid = tenants[tid].twilio_account_sid if tenant_exists else None

    plan = ImportPlan(old_text=existing_text, text=existing_text, tenant=tid)
    nl = "\r\n" if "\r\n" in existing_text else "\n"

    def add(e: ExportEntry, number: str, action: Action, agent: str | None = None, *,
            reason: str = "", notes: list[str] | None = None) -> None:
        plan.results.append(NumberResult(number, action, agent, reason, tuple(notes or ()),
                                          index=e.index))

    # Pass 1: validate every entry, decide its route.
    valid: list[tuple[ExportEntry, str, _Route, list[str]]] = []
    seen: set[str] = set()
    for e in entries:
        label = f"#{e.index}"
        if not e.is_object:
            add(e, label, "skipped", reason="entry is not an object")
            continue
        if e.phone_number is None:
            why = ("phone_number is not a string" if "phone_number" in e.problems
                   else "missing phone_number")
            add(e, label, "skipped", reason=why)
            continue
        e164 = normalize_e164(e.phone_number)
        if e164 is None:
            add(e, _one_line(e.phone_number, 24) or label, "skipped",
                reason="not a valid E.164 number")
            continue
        if e164 in seen:
            add(e, e164, "skipped", reason="duplicate of an earlier entry in the export")
            continue
        seen.add(e164)
        notes: list[str] = []
        if e.voice_url is None:
            if "voice_url" in e.problems:
                why = "voice_url is not a string"
            elif e.voice_application_sid:
                why = (f"routed to TwiML App {_one_line(e.voice_application_sid, 40)} "
                       "(no voice_url): configure its Voice URL on an agent by hand")
            elif e.trunk_sid:
                why = "routed to a SIP trunk (no voice_url): not a webhook app"
            else:
                why = "missing voice_url"
            add(e, e164, "skipped", reason=why)
            continue
        if not _http_url(e.voice_url):
            add(e, e164, "skipped", reason="voice_url is not an http(s) URL")
            continue
        method = (e.voice_method or "POST").upper()
        if method != "POST":
            notes.append(f"voice_method {_one_line(method, 10)}: the gateway POSTs the "
                         "webhook (Twilio's default); the app must accept POST")
        status_cb = e.status_callback
        if status_cb is not None and not _http_url(status_cb):
            notes.append("status_callback ignored: not an http(s) URL")
            status_cb = None
        if "status_callback" in e.problems:
            notes.append("status_callback ignored: not a string")
        if status_cb is not None and (e.status_callback_method or "POST").upper() != "POST":
            notes.append("status_callback_method is not POST: the gateway POSTs callbacks")
        if e.voice_fallback_url:
            notes.append("voice_fallback_url not imported (see the agent extra 'fallback')")
        if e.normalized_note(e164):
            notes.append(e.normalized_note(e164))
        account = e.account_sid if e.account_sid and is_sid(ACCOUNT_PREFIX, e.account_sid) \
            else None
        if e.account_sid and account is None:
            notes.append("account_sid ignored: not an AC... SID")
        valid.append((e, e164, _Route(e.voice_url, status_cb, account), notes))

    # Pass 2: agents and numbers.
    sids = {r.account_sid for _, _, r, _ in valid if r.account_sid}
    new_tenant_sid = next(iter(sids)) if not tenant_exists and len(sids) == 1 else None
    effective_tenant_sid = tenant_sid if tenant_exists else new_tenant_sid
    route_agent: dict[_Route, str] = {}
    new_agents: dict[str, _Route] = {}
    taken = set(agents)
    new_numbers: list[tuple[str, str, ExportEntry]] = []
    lines = existing_text.splitlines(keepends=True)
    rewritten = False

    def agent_for(route: _Route) -> str:
        if route in route_agent:
            return route_agent[route]
        existing = sorted(
            (a for a in agents.values()
             if _agent_matches(a, route, tid, effective_tenant_sid)),
            key=lambda a: (not a.name.startswith("twilio-"), a.name),
        )
        name = existing[0].name if existing else _agent_name(route, taken)
        if not existing:
            taken.add(name)
            new_agents[name] = route
            plan.agents_added.append(name)
        route_agent[route] = name
        return name

    for e, e164, route, notes in valid:
        current = numbers.get(e164)
        if current is not None:
            cur_agent = agents.get(current.agent)
            if cur_agent is not None and _agent_matches(cur_agent, route, tid,
                                                        effective_tenant_sid):
                add(e, e164, "unchanged", current.agent, notes=notes)
                continue
            if not force:
                add(
                    e, e164, "skipped",
                    reason=f"already routed to agent {current.agent} with other settings; "
                           "left alone (use --force to repoint it)",
                    notes=notes)
                continue
            raw_key = raw_number_keys.get(e164)
            name = agent_for(route)
            if raw_key is None or not _rewrite_number(lines, raw_key, name, nl):
                add(
                    e, e164, "skipped",
                    reason=f"routed to agent {current.agent} in a form this tool cannot "
                           "rewrite (inline table?): edit it by hand",
                    notes=notes)
                continue
            rewritten = True
            add(e, e164, "updated", name, reason=f"was agent {current.agent}", notes=notes)
            continue
        name = agent_for(route)
        new_numbers.append((e164, name, e))
        add(e, e164, "added", name, notes=notes)

    # Drop agents created only for numbers that were finally not written.
    used = {n for _, n, _ in new_numbers} | {
        r.agent for r in plan.results if r.action == "updated" and r.agent}
    for name in list(new_agents):
        if name not in used:
            del new_agents[name]
            plan.agents_added.remove(name)

    plan.results.sort(key=lambda r: r.index)
    if not new_agents and not new_numbers and not rewritten:
        return plan
    if new_agents:
        plan.notes.append("set AIGW_TWILIO_AUTH_TOKEN to the account's auth token so the "
                          "apps can validate X-Twilio-Signature")

    # Text: header additions, then appended tables.
    head: list[str] = []
    if "default_agent" not in data and len(agents) + len(new_agents) > 1:
        default = next(iter(agents)) if len(agents) == 1 else next(iter(new_agents))
        head.append(f"default_agent = {toml_string(default)}{nl}")
        plan.notes.append(f"default_agent set to {default} (the loader needs one now "
                          "that there are several agents)")
    blocks: list[str] = ["# Imported from a Twilio IncomingPhoneNumbers export by "
                         "`audiosocket-gw numbers import`."]
    if not tenant_exists and (new_agents or new_numbers):
        plan.tenant_added = True
        t = [f"[tenants.{toml_string(tid)}]"]
        if new_tenant_sid:
            t.append(f"twilio_account_sid = {toml_string(new_tenant_sid)}")
        blocks.append("\n".join(t))
    for name, route in new_agents.items():
        a = [f"[agents.{toml_string(name)}]",
             f"tenant = {toml_string(tid)}",
             'backend = "twilio-stream"',
             f"voice_url = {toml_string(route.voice_url)}"]
        if route.status_callback:
            a.append(f"status_callback = {toml_string(route.status_callback)}")
        if route.account_sid and route.account_sid != effective_tenant_sid:
            a += ["", f"[agents.{toml_string(name)}.extra]",
                  f"account_sid = {toml_string(route.account_sid)}"]
        blocks.append("\n".join(a))
    for e164, name, e in new_numbers:
        n: list[str] = []
        label = " ".join(x for x in (_one_line(e.friendly_name or ""),
                                     _one_line(e.sid or "", 40)) if x)
        if label:
            n.append(f"# {label}")
        n += [f"[numbers.{toml_string(e164)}]", f"agent = {toml_string(name)}"]
        blocks.append("\n".join(n))

    body = "".join(lines)
    if body and not body.endswith(("\n", "\r")):
        body += nl
    appended = ""
    if new_agents or new_numbers:
        appended = (nl if body else "") + (nl + nl).join(
            b.replace("\n", nl) for b in blocks) + nl
    plan.text = "".join(head) + body + appended
    _validate(plan, source)
    return plan


def _validate(plan: ImportPlan, source: str) -> None:
    """The new text must load and route every imported number as reported."""
    try:
        cfg = loads_tenants(plan.text, source=source)
    except ConfigError as exc:
        raise NumbersImportError(
            f"the merged file would not load ({exc}); nothing written. Does the file "
            "define numbers, agents or tenants as inline tables?") from None
    for r in plan.results:
        if r.action == "skipped":
            continue
        num = cfg.lookup_did(r.number)
        if num is None or num.agent != r.agent:
            raise NumbersImportError(f"internal error: {r.number} does not route to {r.agent} "
                                     "in the merged file; nothing written")


# ---------------------------------------------------------------------------
# CLI shell


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``numbers`` with its ``import`` sub-command."""
    p = subparsers.add_parser("numbers", help="manage the DID map (numbers -> agents)",
                              description="Manage the DID map in the tenants TOML file.")
    sub = p.add_subparsers(dest="numbers_command", metavar="SUBCOMMAND", required=True)
    imp = sub.add_parser(
        "import", help="import a Twilio IncomingPhoneNumbers JSON export",
        description="Route the numbers of a Twilio IncomingPhoneNumbers JSON export to "
                    "twilio-stream agents with the same voice_url and status_callback. "
                    "Idempotent; writes FILE.bak before changing the tenants file. Exit "
                    "code 0: all numbers in place, 1: some skipped, 2: nothing done.")
    imp.add_argument("file", metavar="FILE", help="the export (JSON)")
    imp.add_argument("--config", metavar="TOML",
                     help="tenants TOML file to update (env AIGW_CONFIG); created if missing")
    imp.add_argument("--tenant", metavar="T",
                     help="tenant owning the numbers (default: the file's only tenant, "
                          f"or {DEFAULT_TENANT!r} when it has none)")
    imp.add_argument("--force", action="store_true",
                     help="repoint numbers the file already routes to another agent")
    imp.add_argument("--dry-run", action="store_true",
                     help="print what would be done, write nothing")


def _read_export(path: str) -> object:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_EXPORT_BYTES:
            raise NumbersImportError(f"{path}: {size} bytes is too large for an export")
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise NumbersImportError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NumbersImportError(f"{path}: not valid JSON: {exc}") from None


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` next to ``path`` then rename over it (keeping its mode)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(text.encode("utf-8"))
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    """Execute ``numbers import`` from parsed arguments; returns the exit code."""
    if getattr(args, "numbers_command", None) != "import":
        print("audiosocket-gw numbers: unknown sub-command", file=sys.stderr)
        return 2
    config = args.config or os.environ.get("AIGW_CONFIG")
    if not config:
        print("audiosocket-gw numbers import: no tenants file: pass --config or set "
              "AIGW_CONFIG", file=sys.stderr)
        return 2
    path = Path(config)
    try:
        entries, warnings = parse_export(_read_export(args.file))
        try:
            # Bytes, then decode: read_text() would translate CRLF line ends.
            old = path.read_bytes().decode("utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise NumbersImportError(f"{path}: cannot read: {exc}") from None
        plan = plan_import(old, entries, tenant=args.tenant, force=args.force,
                           source=str(path))
    except NumbersImportError as exc:
        print(f"audiosocket-gw numbers import: {exc}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}")
    print(plan.report())
    if not plan.changed:
        print(f"{path}: nothing to change")
    elif args.dry_run:
        print(f"{path}: dry run, nothing written")
    else:
        try:
            if path.exists():
                shutil.copy2(path, path.with_name(path.name + ".bak"))
            _write_atomically(path, plan.text)
        except OSError as exc:
            print(f"audiosocket-gw numbers import: cannot write {path}: {exc}",
                  file=sys.stderr)
            return 2
        backup = " (previous version in .bak)" if old else ""
        print(f"{path}: written{backup}")
    return 1 if plan.count("skipped") else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m audiosocket_gw.numbers_import import FILE ...`` (same as the CLI)."""
    parser = argparse.ArgumentParser(prog="audiosocket-gw")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return run(parser.parse_args(["numbers", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    raise SystemExit(main())
