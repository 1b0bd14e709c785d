"""Twilio's REST API for calls and recordings, on the gateway's HTTP address.

Why: an app that places and manages calls with Twilio's SDK keeps doing so unchanged:
it points its client's base URL at the gateway (``client.api.base_url``) and nothing
else changes. docs/TWILIO.md lists every resource, parameter and error.

Routes, under ``/2010-04-01/Accounts/{AccountSid}/`` (form-encoded bodies, JSON out)::

    POST   Calls.json                      create (201)
    GET    Calls.json                      list (Status To From StartTime StartTime< >)
    GET    Calls/{CallSid}.json            fetch
    POST   Calls/{CallSid}.json            update (Status, Url/Method, Twiml)
    DELETE Calls/{CallSid}.json            delete an ended call (204)
    GET    Calls/{CallSid}/Recordings.json the call's recordings
    GET    Calls/{CallSid}/Recordings/{RecordingSid}.json   fetch; DELETE removes it
    GET    Recordings.json                 the account's recordings (CallSid filter)
    GET    Recordings/{RecordingSid}.json  fetch; DELETE removes it (204)
    GET    Recordings/{RecordingSid}[.wav|.mp3]   the media (WAV as stored, Range ok)

Auth: HTTP Basic with the tenant's AccountSid and auth token (``twilio_account_sid``
and ``twilio_auth_token_env`` in the tenants TOML; a tenant without a configured SID
answers to its derived SID, :func:`~audiosocket_gw.twilio.ids.derived_account_sid`),
compared in constant time; anything else is 401 with Twilio's error 20003. Errors use
Twilio's shape ``{"code", "message", "more_info", "status"}``.

A created call runs on the tenant's first ``twilio-stream`` agent: the request's TwiML
(``Url``/``Method`` or ``Twiml``), callbacks and options travel in the call's metadata
(:mod:`audiosocket_gw.twilio.callopts`) through the one outbound path
(``TelephonyProvider.start_outbound_call`` -> ``Admission.admit``). Identities come
from :mod:`audiosocket_gw.twilio.ids` (``CallSid`` = ``call_sid_for(call id)``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import hmac
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from ..callstate import CallStatus
from ..httpapi import JsonBodyError, read_form
from ..store.base import CallRecord
from ..telephony import (
    InvalidNumber,
    LimitExceeded,
    OriginateRejected,
    ProviderUnavailable,
    TelephonyError,
    TelephonyProvider,
    UnknownAgent,
    UnknownTenant,
)
from ..tenants import Agent, Tenant, normalize_e164
from . import verbrec
from .callbacks import rfc2822
from .callopts import CallOptions
from .ids import (
    ACCOUNT_PREFIX,
    CALL_PREFIX,
    account_sid_for,
    auth_token_for,
    call_id_for_sid,
    call_sid_for,
    derived_account_sid,
    is_sid,
)
from .twiml import TwimlError, parse_twiml
from .twiml_exec import RECORD_VERB_DIR

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext
    from ..recordings.component import RecordingsComponent
    from ..recordings.queue import RecordingRow

__all__ = [
    "API_VERSION",
    "ERR_NO_TWIML_AGENT",
    "TwilioApiError",
    "TwilioRestApi",
    "Redirectable",
    "twilio_error",
]

log = logging.getLogger("audiosocket_gw.twilio.rest")

API_VERSION: Final = "2010-04-01"
PREFIX: Final = f"/{API_VERSION}/Accounts/{{account_sid}}"
DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
MAX_PAGE: Final = 1_000_000
MAX_TWIML: Final = 64 * 1024
MAX_FORM: Final = 4 * MAX_TWIML  # a percent-encoded Twiml parameter is up to 3x longer
MAX_MP3_SOURCE: Final = 200 * 1024 * 1024
"""Largest WAV encoded to MP3 on request (about 3.6 hours of 8 kHz stereo)."""

# Twilio error codes (https://www.twilio.com/docs/api/errors), and the gateway's own.
ERR_AUTH: Final = 20003  # Authentication Error - invalid username/password
ERR_NOT_FOUND: Final = 20404  # The requested resource was not found
ERR_METHOD: Final = 20004  # Method not allowed
ERR_NOT_COMPLETE: Final = 20009  # Cannot delete this resource before it is complete
ERR_TOO_MANY: Final = 20429  # Too Many Requests
ERR_INTERNAL: Final = 20500  # Internal Server Error
ERR_UNAVAILABLE: Final = 20503  # Service Unavailable
ERR_NO_TO: Final = 21201  # No 'To' number is specified
ERR_URL: Final = 21205  # Url is not a valid URL (also: neither Url nor Twiml given)
ERR_TO: Final = 21211  # Invalid 'To' Phone Number
ERR_FROM: Final = 21212  # Invalid 'From' Phone Number
ERR_NO_FROM: Final = 21213  # No 'From' number is specified
ERR_CALL_STATE: Final = 21220  # Invalid call state (not in progress: cannot redirect)
ERR_STATUS_CALLBACK: Final = 21609  # Invalid StatusCallback URL
ERR_PARAM: Final = 20001  # the gateway's code for any other invalid parameter
ERR_NO_TWIML_AGENT: Final = 99001  # the gateway's: the tenant has no twilio-stream agent
ERR_NO_MP3: Final = 99002  # the gateway's: MP3 requested, no encoder installed

STATUS_EVENTS: Final = frozenset({"initiated", "ringing", "answered", "completed"})
MACHINE_DETECTION: Final = frozenset({"Enable", "DetectMessageEnd"})
_DIGITS_RE: Final = re.compile(r"[0-9#*wW]{1,32}")
_DATE_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

Handler = Callable[[web.Request, Tenant, str], Awaitable[web.StreamResponse]]


@runtime_checkable
class Redirectable(Protocol):
    """A backend session that can run new TwiML on its live call (the TwiML executor)."""

    async def redirect(self, *, url: str | None, method: str = "POST",
                       twiml: str | None = None) -> None: ...


def twilio_error(status: int, code: int, message: str, **headers: str) -> web.Response:
    """Twilio's error JSON (what the SDKs turn into ``TwilioRestException``)."""
    return web.json_response(
        {"code": code, "message": message,
         "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status=status, headers=headers or None)


class TwilioApiError(Exception):
    """A request the API refuses: Twilio's error ``code``, the HTTP ``status``."""

    def __init__(self, code: int, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status

    def response(self) -> web.Response:
        return twilio_error(self.status, self.code, str(self))


def _date(at: float | None) -> str | None:
    """A record's time as Twilio writes dates (``callbacks.rfc2822``), or None."""
    return None if at is None else rfc2822(at)


def _direction(direction: str) -> str:
    return "outbound-api" if direction == "outbound" else "inbound"


def call_json(rec: CallRecord, account_sid: str) -> dict[str, Any]:
    """A call as Twilio's ``Call`` resource."""
    sid = call_sid_for(rec.id)
    base = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}"
    queued = rec.status is CallStatus.QUEUED
    duration = None
    if rec.is_terminal:
        duration = str(int(math.ceil(rec.billable_s or 0)))
    updated = max(x for x in (rec.created_at, rec.answered_at, rec.ended_at) if x is not None)
    return {
        "sid": sid,
        "account_sid": account_sid,
        "parent_call_sid": None,
        "date_created": _date(rec.created_at),
        "date_updated": _date(updated),
        "to": rec.to,
        "to_formatted": rec.to,
        "from": rec.from_,
        "from_formatted": rec.from_,
        "phone_number_sid": None,
        "status": rec.status.value,
        "start_time": None if queued else _date(rec.created_at),
        "end_time": _date(rec.ended_at),
        "duration": duration,
        "price": None,
        "price_unit": "USD",
        "direction": _direction(rec.direction),
        "answered_by": rec.answered_by,
        "api_version": API_VERSION,
        "forwarded_from": None,
        "group_sid": None,
        "caller_name": None,
        "queue_time": "0",
        "trunk_sid": None,
        "annotation": None,
        "uri": base + ".json",
        "subresource_uris": {
            "recordings": base + "/Recordings.json",
            "notifications": base + "/Notifications.json",
            "events": base + "/Events.json",
            "payments": base + "/Payments.json",
            "siprec": base + "/Siprec.json",
            "streams": base + "/Streams.json",
            "transcriptions": base + "/Transcriptions.json",
            "user_defined_message_subscriptions":
                base + "/UserDefinedMessageSubscriptions.json",
            "user_defined_messages": base + "/UserDefinedMessages.json",
        },
    }


VERB_SOURCE: Final = "twiml-record"
"""``RecordingRow.source`` of a ``<Record>`` recording (twilio/verbrec.py)."""


def _recording_source(source: str) -> str:
    if source == VERB_SOURCE:
        return "RecordVerb"
    return "StartCallRecordingAPI" if source == "gateway" else "DialVerb"


def _verb_row(v: verbrec.VerbRecording, rec: CallRecord) -> RecordingRow:
    """A ``<Record>`` recording in the pipeline's row shape (for the same JSON and
    media handlers); mono, never uploaded."""
    from ..recordings.queue import RecordingRow

    return RecordingRow(
        call_id=rec.id, tenant=rec.tenant, agent=rec.agent or "", source=VERB_SOURCE,
        path=str(v.path), key="", recording_sid=v.sid, state="captured", attempts=0,
        sha256="", size=0, duration_s=v.duration_s, channels=1,
        captured_at=v.started_at + v.duration_s, next_attempt_at=0.0)


def recording_json(row: RecordingRow, account_sid: str, origin: str) -> dict[str, Any]:
    """A recording as Twilio's ``Recording`` resource (``origin``: this gateway's
    scheme://host, for the absolute ``media_url``)."""
    base = f"/{API_VERSION}/Accounts/{account_sid}/Recordings/{row.recording_sid}"
    started = row.captured_at - row.duration_s
    return {
        "sid": row.recording_sid,
        "account_sid": account_sid,
        "call_sid": call_sid_for(row.call_id),
        "conference_sid": None,
        "date_created": _date(started),
        "date_updated": _date(row.captured_at),
        "start_time": _date(started),
        "duration": str(int(round(row.duration_s))),
        "channels": row.channels,
        "source": _recording_source(row.source),
        "status": "failed" if row.state == "failed" else "completed",
        "error_code": None,
        "price": None,
        "price_unit": "USD",
        "api_version": API_VERSION,
        "track": "both",
        "encryption_details": None,
        "uri": base + ".json",
        "media_url": origin + base,
        "subresource_uris": {
            "add_on_results": base + "/AddOnResults.json",
            "transcriptions": base + "/Transcriptions.json",
        },
    }


# -- parameters ------------------------------------------------------------------------


def _http_url(value: str, code: int, name: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TwilioApiError(code, f"{name} is not a valid URL: {value!r}")
    return value


def _method(form: Mapping[str, str], name: str) -> str:
    raw = form.get(name, "")
    if not raw:
        return ""
    if raw.upper() not in ("GET", "POST"):
        raise TwilioApiError(ERR_PARAM, f"{name} must be GET or POST")
    return raw.upper()


def _bool(form: Mapping[str, str], name: str) -> str:
    raw = form.get(name, "")
    if not raw:
        return ""
    if raw.lower() not in ("true", "false"):
        raise TwilioApiError(ERR_PARAM, f"{name} must be true or false")
    return "true" if raw.lower() == "true" else ""


def _opt_url(form: Mapping[str, str], name: str, code: int = ERR_URL) -> str:
    raw = form.get(name, "")
    return _http_url(raw, code, name) if raw else ""


def _events(form: MultiDictProxy[str], name: str, allowed: frozenset[str]) -> str:
    events: list[str] = []
    for value in form.getall(name, []):
        for event in str(value).replace(",", " ").split():
            if event not in allowed:
                raise TwilioApiError(ERR_PARAM, f"{name} {event!r} is not one of "
                                           f"{', '.join(sorted(allowed))}")
            events.append(event)
    return " ".join(dict.fromkeys(events))


def create_options(form: MultiDictProxy[str]) -> tuple[str, str, float | None, CallOptions]:
    """Validate a ``Calls.json`` create form: (To, From, ring timeout, options)."""
    to = form.get("To", "").strip()
    from_ = (form.get("From", "") or form.get("CallerId", "")).strip()
    if not to:
        raise TwilioApiError(ERR_NO_TO, "A 'To' phone number is required.")
    if not from_:
        raise TwilioApiError(ERR_NO_FROM, "A 'From' phone number is required.")
    if normalize_e164(to) is None:
        raise TwilioApiError(ERR_TO, f"The 'To' number {to} is not a valid phone number.")
    if normalize_e164(from_) is None:
        raise TwilioApiError(ERR_FROM, f"The 'From' number {from_} is not a valid phone number.")
    if form.get("ApplicationSid"):
        raise TwilioApiError(ERR_PARAM, "ApplicationSid is not supported by this gateway: "
                                   "give Url or Twiml")
    url, twiml = form.get("Url", ""), form.get("Twiml", "")
    if url and twiml:
        raise TwilioApiError(ERR_PARAM, "Give either Url or Twiml, not both")
    if not url and not twiml:
        raise TwilioApiError(ERR_URL, "Url or Twiml is required.")
    if url:
        _http_url(url, ERR_URL, "Url")
    _check_twiml(twiml)
    timeout: float | None = None
    if form.get("Timeout"):
        try:
            timeout = float(min(600, max(1, int(form["Timeout"]))))
        except ValueError:
            raise TwilioApiError(ERR_PARAM, "Timeout must be a whole number of seconds") from None
    machine = form.get("MachineDetection", "")
    if machine and machine not in MACHINE_DETECTION:
        raise TwilioApiError(ERR_PARAM, "MachineDetection must be Enable or DetectMessageEnd")
    amd_timeout = form.get("MachineDetectionTimeout", "")
    if amd_timeout and not amd_timeout.isdigit():
        raise TwilioApiError(ERR_PARAM, "MachineDetectionTimeout must be a whole number")
    digits = form.get("SendDigits", "")
    if digits and not _DIGITS_RE.fullmatch(digits):
        raise TwilioApiError(ERR_PARAM, "SendDigits may hold only 0-9, #, * and w (32 at most)")
    opts = CallOptions(
        twiml_url=url,
        twiml_method=_method(form, "Method"),
        twiml=twiml,
        status_callback=_opt_url(form, "StatusCallback", ERR_STATUS_CALLBACK),
        status_callback_method=_method(form, "StatusCallbackMethod"),
        status_callback_event=_events(form, "StatusCallbackEvent", STATUS_EVENTS),
        record=_bool(form, "Record"),
        recording_status_callback=_opt_url(form, "RecordingStatusCallback"),
        recording_status_callback_method=_method(form, "RecordingStatusCallbackMethod"),
        recording_status_callback_event=_events(
            form, "RecordingStatusCallbackEvent", frozenset({"in-progress", "completed",
                                                             "absent"})),
        send_digits=digits,
        machine_detection=machine,
        machine_detection_timeout=amd_timeout,
        async_amd=_bool(form, "AsyncAmd"),
        async_amd_status_callback=_opt_url(form, "AsyncAmdStatusCallback"),
        async_amd_status_callback_method=_method(form, "AsyncAmdStatusCallbackMethod"),
        caller_id=form.get("CallerId", ""),
    )
    return to, from_, timeout, opts


def _check_twiml(twiml: str) -> None:
    """Inline ``Twiml`` must be a TwiML document the gateway can run (checked up front,
    so a bad one is a 400 rather than a call that hangs up)."""
    if not twiml:
        return
    if len(twiml.encode("utf-8", "surrogateescape")) > MAX_TWIML:
        raise TwilioApiError(ERR_PARAM, f"Twiml is longer than {MAX_TWIML} bytes")
    try:
        parse_twiml(twiml)
    except TwimlError as exc:
        raise TwilioApiError(ERR_PARAM, f"Twiml is not valid TwiML: {exc}") from None


def _time_bound(raw: str, *, end_of_day: bool) -> float:
    """A ``StartTime`` filter value: ``YYYY-MM-DD`` or ISO 8601 (the SDKs send
    ``YYYY-MM-DDTHH:MM:SSZ``), as epoch seconds."""
    raw = raw.strip()
    try:
        if _DATE_RE.fullmatch(raw):
            day = dt.datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            return (day + dt.timedelta(days=1)).timestamp() - 1e-6 if end_of_day \
                else day.timestamp()
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise TwilioApiError(ERR_PARAM, f"bad date {raw!r}: use YYYY-MM-DD or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass(frozen=True)
class _Paging:
    page: int
    size: int

    @classmethod
    def of(cls, q: Mapping[str, str]) -> _Paging:
        try:
            size = int(q.get("PageSize", DEFAULT_PAGE_SIZE))
            page = int(q.get("Page", 0))
        except ValueError:
            raise TwilioApiError(ERR_PARAM, "Page and PageSize must be whole numbers") from None
        if not 1 <= size <= MAX_PAGE_SIZE or not 0 <= page <= MAX_PAGE:
            raise TwilioApiError(ERR_PARAM, f"PageSize must be 1..{MAX_PAGE_SIZE}, "
                                       f"Page 0..{MAX_PAGE}")
        return cls(page, size)

    @property
    def offset(self) -> int:
        return self.page * self.size

    def body(self, key: str, items: list[Any], path: str, q: Mapping[str, str],
             more: bool) -> dict[str, Any]:
        """Twilio's list envelope: the items under ``key`` and the paging fields."""
        keep = [(k, v) for k, v in q.items() if k not in ("Page", "PageSize", "PageToken")]

        def uri(page: int) -> str:
            return path + "?" + urlencode(keep + [("PageSize", str(self.size)),
                                                  ("Page", str(page))])

        return {
            key: items,
            "page": self.page,
            "page_size": self.size,
            "start": self.offset,
            "end": self.offset + max(0, len(items) - 1),
            "uri": uri(self.page),
            "first_page_uri": uri(0),
            "next_page_uri": uri(self.page + 1) if more else None,
            "previous_page_uri": uri(self.page - 1) if self.page > 0 else None,
        }


# -- the component ---------------------------------------------------------------------


class TwilioRestApi:
    """The ``/2010-04-01/Accounts/{AccountSid}/`` routes (a gateway component)."""

    def __init__(self, ctx: GatewayContext, provider: TelephonyProvider,
                 recordings: RecordingsComponent | None = None) -> None:
        self.ctx = ctx
        self.provider = provider
        self.recordings = recordings
        self.env: Mapping[str, str] = ctx.settings.environ
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe: list[Callable[[], None]] = []

    def routes(self) -> list[web.RouteDef]:
        p = PREFIX
        a = self._authed
        return [
            web.post(f"{p}/Calls.json", a(self.create_call)),
            web.get(f"{p}/Calls.json", a(self.list_calls), allow_head=False),
            web.get(f"{p}/Calls/{{sid}}.json", a(self.fetch_call), allow_head=False),
            web.post(f"{p}/Calls/{{sid}}.json", a(self.update_call)),
            web.delete(f"{p}/Calls/{{sid}}.json", a(self.delete_call)),
            web.get(f"{p}/Calls/{{sid}}/Recordings.json", a(self.list_call_recordings),
                    allow_head=False),
            web.get(f"{p}/Calls/{{sid}}/Recordings/{{rsid}}.json", a(self.fetch_call_recording),
                    allow_head=False),
            web.delete(f"{p}/Calls/{{sid}}/Recordings/{{rsid}}.json",
                       a(self.delete_call_recording)),
            web.get(f"{p}/Recordings.json", a(self.list_recordings), allow_head=False),
            web.get(f"{p}/Recordings/{{sid}}.json", a(self.fetch_recording),
                    allow_head=False),
            web.delete(f"{p}/Recordings/{{sid}}.json", a(self.delete_recording)),
            web.get(f"{p}/Recordings/{{sid}}.wav", a(self.recording_wav)),
            web.get(f"{p}/Recordings/{{sid}}.mp3", a(self.recording_mp3)),
            web.get(f"{p}/Recordings/{{sid:RE[0-9a-f]{{32}}}}", a(self.recording_wav)),
            # Last: anything else of the account (Messages, Conferences...) is Twilio's 404.
            web.route("*", f"{p}/{{tail:.*}}", a(self.not_supported)),
        ]

    async def not_supported(self, request: web.Request, tenant: Tenant,
                            account_sid: str) -> web.StreamResponse:
        raise TwilioApiError(ERR_NOT_FOUND, f"The requested resource {request.path} was not found "
                                       "(not supported by this gateway: docs/TWILIO.md)", 404)

    async def start(self) -> None:
        """Watch answered calls for ``SendDigits``."""
        self._unsubscribe = [self.ctx.events.started.connect(self._on_call_start)]

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- auth ------------------------------------------------------------------------

    def account_sid(self, tenant: Tenant) -> str:
        return account_sid_for(tenant.id, tenant=tenant, agent=None, env=self.env)

    def _tenants_for(self, account_sid: str) -> list[Tenant]:
        found = []
        for tenant in self.ctx.tenants.tenants.values():
            sids = {self.account_sid(tenant)}
            if not tenant.twilio_account_sid:
                sids.add(derived_account_sid(tenant.id))
            if account_sid in sids:
                found.append(tenant)
        return found

    def authenticate(self, header: str, account_sid: str) -> Tenant | None:
        """The tenant whose AccountSid and auth token are in ``header`` (Basic) and
        whose SID is ``account_sid``; None for anything else (constant-time compare)."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not is_sid(ACCOUNT_PREFIX, account_sid):
            return None
        try:
            raw = base64.b64decode(value.strip().encode("ascii"), validate=True)
        except (UnicodeError, binascii.Error, ValueError):
            return None
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        user_ok = hmac.compare_digest(user, account_sid.encode("ascii"))
        matches = []
        for tenant in self._tenants_for(account_sid):
            token = auth_token_for(tenant=tenant, agent=None, env=self.env)
            if token is None:
                continue
            if hmac.compare_digest(password, token.encode("utf-8")) and user_ok:
                matches.append(tenant)
        if len(matches) > 1:
            # Same AccountSid (AIGW_TWILIO_ACCOUNT_SID) and same token: which tenant is
            # meant cannot be told, so none is (docs/TWILIO.md).
            log.warning("REST credentials match %d tenants (%s): refused", len(matches),
                        ", ".join(t.id for t in matches))
            return None
        return matches[0] if matches else None

    def _authed(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            account_sid = request.match_info["account_sid"]
            tenant = self.authenticate(request.headers.get("Authorization", ""), account_sid)
            if tenant is None:
                return twilio_error(401, ERR_AUTH, "Authenticate",
                                    **{"WWW-Authenticate": 'Basic realm="Twilio API"'})
            try:
                return await handler(request, tenant, account_sid)
            except TwilioApiError as exc:
                return exc.response()

        return wrapped

    # -- calls -----------------------------------------------------------------------

    def twiml_agent(self, tenant: Tenant) -> Agent | None:
        """The tenant's agent that runs TwiML: its first ``twilio-stream`` agent."""
        return next((a for a in self.ctx.tenants.agents.values()
                     if a.tenant == tenant.id and a.backend == "twilio-stream"), None)

    async def _form(self, request: web.Request) -> MultiDictProxy[str]:
        try:
            return await read_form(request, max_body=MAX_FORM)
        except JsonBodyError as exc:
            raise TwilioApiError(ERR_PARAM, f"{exc} (application/x-www-form-urlencoded, "
                                 f"at most {MAX_FORM} bytes)", status=exc.status) from None

    async def create_call(self, request: web.Request, tenant: Tenant,
                          account_sid: str) -> web.StreamResponse:
        form = await self._form(request)
        to, from_, timeout, opts = create_options(form)
        agent = self.twiml_agent(tenant)
        if agent is None:
            return twilio_error(400, ERR_NO_TWIML_AGENT,
                                f"tenant {tenant.id!r} needs an agent with backend "
                                "\"twilio-stream\" to run the TwiML of REST-created calls")
        meta = opts.to_metadata()
        try:
            call_id = await self.provider.start_outbound_call(
                tenant.id, to, from_, meta, agent=agent.name, ring_timeout_s=timeout,
                call_metadata=meta)
        except LimitExceeded as exc:
            return twilio_error(429, ERR_TOO_MANY, str(exc), **{"Retry-After": "1"})
        except InvalidNumber as exc:
            return twilio_error(400, ERR_TO, str(exc))
        except (UnknownTenant, UnknownAgent) as exc:
            return twilio_error(400, ERR_NO_TWIML_AGENT, str(exc))
        except OriginateRejected as exc:
            return twilio_error(502, ERR_INTERNAL, f"the PBX refused the call: {exc}")
        except (ProviderUnavailable, TelephonyError) as exc:
            return twilio_error(503, ERR_UNAVAILABLE, str(exc), **{"Retry-After": "2"})
        rec = await self.provider.get_call(call_id)
        if rec is None:
            return twilio_error(503, ERR_INTERNAL, "the call was placed but not stored")
        log.info("REST call %s created (tenant %s, agent %s)", call_sid_for(call_id),
                 tenant.id, agent.name)
        return web.json_response(call_json(rec, account_sid), status=201)

    async def _call(self, tenant: Tenant, sid: str) -> CallRecord:
        call_id = call_id_for_sid(sid) if is_sid(CALL_PREFIX, sid) else None
        rec = await self.ctx.store.get_call(call_id) if call_id is not None else None
        if rec is None or rec.tenant != tenant.id:
            raise TwilioApiError(ERR_NOT_FOUND, f"The requested resource /{API_VERSION}/Accounts/"
                                           f".../Calls/{sid}.json was not found", 404)
        return rec

    async def fetch_call(self, request: web.Request, tenant: Tenant,
                         account_sid: str) -> web.StreamResponse:
        rec = await self._call(tenant, request.match_info["sid"])
        return web.json_response(call_json(rec, account_sid))

    async def list_calls(self, request: web.Request, tenant: Tenant,
                         account_sid: str) -> web.StreamResponse:
        q = request.query
        paging = _Paging.of(q)
        status: CallStatus | None = None
        if q.get("Status"):
            try:
                status = CallStatus(q["Status"])
            except ValueError:
                raise TwilioApiError(ERR_PARAM, f"unknown Status {q['Status']!r}") from None
        for unsupported in ("EndTime", "EndTime<", "EndTime>"):
            if q.get(unsupported):
                raise TwilioApiError(ERR_PARAM, f"the {unsupported} filter is not supported")
        numbers: dict[str, str | None] = {}
        for name in ("To", "From"):
            raw = q.get(name, "")
            numbers[name] = (normalize_e164(raw) or raw) if raw else None
        after = _time_bound(q["StartTime>"], end_of_day=False) if q.get("StartTime>") else None
        before = _time_bound(q["StartTime<"], end_of_day=True) if q.get("StartTime<") else None
        if q.get("StartTime"):
            day = q["StartTime"][:10]
            after = max(after or -math.inf, _time_bound(day, end_of_day=False))
            before = min(before or math.inf, _time_bound(day, end_of_day=True))
        if q.get("ParentCallSid"):
            rows: list[CallRecord] = []  # the gateway's calls have no child calls
        else:
            rows = await self.ctx.store.list_calls(
                status=status, tenant=tenant.id, limit=paging.size + 1, from_=numbers["From"],
                to=numbers["To"], created_from=after, created_until=before,
                offset=paging.offset)
        more = len(rows) > paging.size
        items = [call_json(r, account_sid) for r in rows[:paging.size]]
        return web.json_response(paging.body("calls", items, request.path, q, more))

    async def update_call(self, request: web.Request, tenant: Tenant,
                          account_sid: str) -> web.StreamResponse:
        rec = await self._call(tenant, request.match_info["sid"])
        form = await self._form(request)
        status = form.get("Status", "")
        url, twiml = form.get("Url", ""), form.get("Twiml", "")
        if status and status not in ("canceled", "completed"):
            raise TwilioApiError(ERR_PARAM, "Status must be canceled or completed")
        if status:
            if status == "completed" or rec.status in (CallStatus.QUEUED, CallStatus.RINGING):
                after = await self.provider.hangup(rec.id)
                rec = after or rec
            return web.json_response(call_json(rec, account_sid))
        if not url and not twiml:
            raise TwilioApiError(ERR_PARAM, "give Status, Url or Twiml")
        self.redirect_live(rec, url=url, method=_method(form, "Method") or "POST",
                           twiml=twiml)
        return web.json_response(call_json(rec, account_sid))

    def redirect_live(self, rec: CallRecord, *, url: str = "", method: str = "POST",
                      twiml: str = "") -> None:
        """Run new TwiML on the live call ``rec``, cutting short what it runs now:
        ``url`` fetched with ``method``, or the inline ``twiml``.

        The one live-redirect path: the REST update (``Calls/{Sid}.json`` with
        ``Url``/``Twiml``) and ``POST /v1/calls/{id}/twiml`` both come here.
        ``TwilioApiError``: 400 with 20001 (neither or both given, bad method, invalid
        TwiML), 21205 (``url`` not http(s)), 21220 (the call is not in progress, or its
        agent does not run TwiML).
        """
        if not url and not twiml:
            raise TwilioApiError(ERR_PARAM, "give Url or Twiml")
        if url and twiml:
            raise TwilioApiError(ERR_PARAM, "Give either Url or Twiml, not both")
        if url:
            _http_url(url, ERR_URL, "Url")
        if method not in ("GET", "POST"):
            raise TwilioApiError(ERR_PARAM, "Method must be GET or POST")
        _check_twiml(twiml)
        live = self.ctx.calls.get(rec.id)
        session = live.session if live is not None else None
        if rec.status is not CallStatus.IN_PROGRESS or session is None:
            raise TwilioApiError(ERR_CALL_STATE, "Call is not in-progress. Cannot redirect.")
        if not isinstance(session, Redirectable):
            raise TwilioApiError(ERR_CALL_STATE, "this call's agent does not run TwiML "
                                                 "(backend is not twilio-stream)")
        self._spawn(session.redirect(url=url or None, method=method, twiml=twiml or None),
                    rec.id)
        log.info("call %s redirected to new TwiML", call_sid_for(rec.id))

    def _spawn(self, coro: Awaitable[None], call_id: str) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("call %s: REST background step failed", call_id)

        task = asyncio.get_running_loop().create_task(run(), name=f"{call_id}:rest")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def delete_call(self, request: web.Request, tenant: Tenant,
                          account_sid: str) -> web.StreamResponse:
        rec = await self._call(tenant, request.match_info["sid"])
        if not rec.is_terminal:
            raise TwilioApiError(ERR_NOT_COMPLETE,
                            "Cannot delete this resource before it is complete")
        await self.ctx.store.delete_call(rec.id)
        return web.Response(status=204)

    # -- SendDigits ------------------------------------------------------------------

    def _on_call_start(self, call: Call) -> None:
        digits = CallOptions.from_metadata(call.info.metadata).send_digits
        if digits:
            self.send_digits_hook(call, digits)

    def send_digits_hook(self, call: Call, digits: str) -> bool:
        """``SendDigits``: play ``digits`` once the call is answered, through call
        control (``send_dtmf`` on the live call) when the gateway has it.

        Without call control (no AMI) the digits stay recorded in the call's metadata and a
        ``send_digits`` event (``played: false``) is added to the call's event log;
        returns whether they were handed to call control.
        """
        call_id = call.call_id
        if call.on_send_dtmf is not None:  # the AMI call controller is there
            call.send_dtmf(digits)
            played = True
        else:
            log.info("call %s: SendDigits recorded, not played (no call control)", call_id)
            played = False
        self._spawn(self._note_digits(call_id, digits, played), call_id)
        return played

    async def _note_digits(self, call_id: str, digits: str, played: bool) -> None:
        await self.ctx.store.append_event(call_id, "send_digits", self.ctx.clock.wall(),
                                          {"digits": digits, "played": played})

    # -- recordings ------------------------------------------------------------------

    def _pipeline_ok(self) -> RecordingsComponent:
        if self.recordings is None:
            raise TwilioApiError(ERR_NOT_FOUND, "recordings are not enabled on this gateway", 404)
        return self.recordings

    @staticmethod
    def _origin(request: web.Request) -> str:
        return str(request.url.origin())

    @property
    def verb_dir(self) -> Path:
        """Where ``<Record>`` recordings are (twiml_exec, twilio/verbrec.py)."""
        return self.ctx.settings.core.data_path / RECORD_VERB_DIR

    async def _recording(self, tenant: Tenant, sid: str) -> RecordingRow:
        """Recording ``sid`` of ``tenant``: the call's recording (the pipeline) or one
        of its ``<Record>`` recordings; Twilio's 404 otherwise."""
        call_id = call_id_for_sid(sid) if sid.startswith("RE") else None
        row = None
        if call_id is not None and self.recordings is not None:
            row = await self.recordings.pipeline.get(call_id)
        if row is not None and row.tenant == tenant.id:
            return row
        verb = await asyncio.to_thread(verbrec.load, self.verb_dir, sid)
        if verb is not None:
            with contextlib.suppress(TwilioApiError):
                return _verb_row(verb, await self._call(tenant, verb.call_sid))
        raise TwilioApiError(ERR_NOT_FOUND, f"The requested resource /{API_VERSION}/Accounts/"
                                            f".../Recordings/{sid} was not found", 404)

    async def _delete(self, row: RecordingRow) -> None:
        if row.source == VERB_SOURCE:
            await asyncio.to_thread(verbrec.delete, self.verb_dir, row.recording_sid)
        else:
            await self._pipeline_ok().pipeline.delete(row)

    async def _list_recordings(self, request: web.Request, tenant: Tenant, account_sid: str,
                               call_id: str | None) -> web.StreamResponse:
        q = request.query
        paging = _Paging.of(q)
        for unsupported in ("DateCreated", "DateCreated<", "DateCreated>", "ConferenceSid"):
            if q.get(unsupported):
                raise TwilioApiError(ERR_PARAM, f"the {unsupported} filter is not supported")
        if call_id is None and q.get("CallSid"):
            call_id = call_id_for_sid(q["CallSid"]) or "-"
        if call_id is None:  # account-wide: the calls' recordings (the pipeline)
            rows = await self._pipeline_ok().pipeline.page(
                tenant=tenant.id, limit=paging.size + 1, offset=paging.offset)
        else:  # one call: its recording and its <Record> recordings, oldest first
            rows = []
            if self.recordings is not None:
                rows = await self.recordings.pipeline.page(tenant=tenant.id, call_id=call_id,
                                                           limit=1, offset=0)
            rec = await self.ctx.store.get_call(call_id)
            if rec is not None and rec.tenant == tenant.id:
                verbs = await asyncio.to_thread(verbrec.for_call, self.verb_dir,
                                                call_sid_for(call_id))
                rows += [_verb_row(v, rec) for v in verbs]
            rows.sort(key=lambda r: r.captured_at)
            rows = rows[paging.offset:paging.offset + paging.size + 1]
        more = len(rows) > paging.size
        origin = self._origin(request)
        items = [recording_json(r, account_sid, origin) for r in rows[:paging.size]]
        return web.json_response(paging.body("recordings", items, request.path, q, more))

    async def list_recordings(self, request: web.Request, tenant: Tenant,
                              account_sid: str) -> web.StreamResponse:
        return await self._list_recordings(request, tenant, account_sid, None)

    async def list_call_recordings(self, request: web.Request, tenant: Tenant,
                                   account_sid: str) -> web.StreamResponse:
        rec = await self._call(tenant, request.match_info["sid"])
        return await self._list_recordings(request, tenant, account_sid, rec.id)

    async def _call_recording(self, request: web.Request, tenant: Tenant) -> RecordingRow:
        rec = await self._call(tenant, request.match_info["sid"])
        row = await self._recording(tenant, request.match_info["rsid"])
        if row.call_id != rec.id:
            raise TwilioApiError(ERR_NOT_FOUND, "The requested resource was not found", 404)
        return row

    async def fetch_call_recording(self, request: web.Request, tenant: Tenant,
                                   account_sid: str) -> web.StreamResponse:
        row = await self._call_recording(request, tenant)
        return web.json_response(recording_json(row, account_sid, self._origin(request)))

    async def delete_call_recording(self, request: web.Request, tenant: Tenant,
                                    account_sid: str) -> web.StreamResponse:
        row = await self._call_recording(request, tenant)
        await self._delete(row)
        return web.Response(status=204)

    async def fetch_recording(self, request: web.Request, tenant: Tenant,
                              account_sid: str) -> web.StreamResponse:
        row = await self._recording(tenant, request.match_info["sid"])
        return web.json_response(recording_json(row, account_sid, self._origin(request)))

    async def delete_recording(self, request: web.Request, tenant: Tenant,
                               account_sid: str) -> web.StreamResponse:
        row = await self._recording(tenant, request.match_info["sid"])
        await self._delete(row)
        return web.Response(status=204)

    async def recording_wav(self, request: web.Request, tenant: Tenant,
                            account_sid: str) -> web.StreamResponse:
        """The WAV as captured (8 kHz 16-bit); Range requests are honoured. A file
        already moved to the bucket is a redirect to a presigned URL."""
        row = await self._recording(tenant, request.match_info["sid"])
        path = Path(row.path)
        if await asyncio.to_thread(path.is_file):
            return web.FileResponse(path, headers={"Content-Type": "audio/x-wav"})
        url = None if row.source == VERB_SOURCE else await self._pipeline_ok()._url(row)
        if url:
            raise web.HTTPFound(url)
        raise TwilioApiError(ERR_NOT_FOUND, "the recording's media is no longer available", 404)

    async def recording_mp3(self, request: web.Request, tenant: Tenant,
                            account_sid: str) -> web.StreamResponse:
        """The recording encoded to MP3 on request (needs ``lameenc``: the ``mp3``
        extra); 415 with code 99002 when no encoder is installed."""
        row = await self._recording(tenant, request.match_info["sid"])
        path = Path(row.path)
        if not await asyncio.to_thread(path.is_file):
            raise TwilioApiError(ERR_NOT_FOUND, "the recording's media is no longer available "
                                           "locally (fetch the .wav)", 404)
        try:
            body = await asyncio.to_thread(wav_to_mp3, path)
        except ModuleNotFoundError:
            return twilio_error(415, ERR_NO_MP3, "MP3 needs the lameenc package "
                                                 "(pip install 'audiosocket-gw[mp3]'); "
                                                 "fetch the .wav instead")
        except ValueError as exc:
            raise TwilioApiError(ERR_INTERNAL, f"the recording cannot be encoded: {exc}",
                            503) from None
        return web.Response(body=body, content_type="audio/mpeg")


def wav_to_mp3(path: Path) -> bytes:
    """Encode a WAV file to MP3 with LAME (``lameenc``), mono or stereo as stored.

    Raises ModuleNotFoundError when lameenc is not installed, ValueError when the file
    is not readable audio or too large. CPU-bound: run it in a thread.
    """
    import lameenc
    import soundfile as sf

    if path.stat().st_size > MAX_MP3_SOURCE:
        raise ValueError("file too large to encode")
    try:
        pcm, rate = sf.read(str(path), dtype="int16", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(str(exc)) from None
    channels = int(pcm.shape[1])
    if channels not in (1, 2):
        raise ValueError(f"{channels} channels")
    enc = lameenc.Encoder()
    enc.set_bit_rate(32 if channels == 1 else 64)
    enc.set_in_sample_rate(int(rate))
    enc.set_channels(channels)
    enc.set_quality(2)
    out = bytes(enc.encode(pcm.tobytes()))
    return out + bytes(enc.flush())
