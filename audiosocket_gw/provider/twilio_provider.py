"""``TwilioProvider``: the old path, through the official ``twilio`` SDK.

The SDK is imported when a ``TwilioProvider`` is built without a ``client`` (install
the ``provider`` extra, ``pip install audiosocket-gw[provider]``, or ``twilio``).
``api_base_url`` points the SDK's ``api`` domain elsewhere (``https://api.twilio.com``
by default): the gateway's Twilio REST emulation, or a local test server.

``start_outbound_call`` maps ``metadata`` onto ``Calls.create``: ``url`` or ``twiml``
(one is required; ``default_url`` fills in), ``method``, ``status_callback``,
``status_callback_event`` (list), ``status_callback_method``, ``timeout``, ``record``,
``machine_detection``, ``time_limit``; other keys are ignored (Twilio has no free-form
metadata). Twilio answering 429 or 5xx, or unreachable, raises ``ProviderUnavailable``;
another 4xx ``RequestRejected``; no answer after sending ``CallOutcomeUnknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import (
    CallOutcomeUnknown,
    ProviderCall,
    ProviderRecording,
    ProviderUnavailable,
    RequestRejected,
    check_update,
)

__all__ = ["TwilioProvider"]

_CREATE_KEYS = {
    "url": "url", "twiml": "twiml", "method": "method",
    "status_callback": "status_callback", "status_callback_event": "status_callback_event",
    "status_callback_method": "status_callback_method", "timeout": "timeout",
    "record": "record", "machine_detection": "machine_detection", "time_limit": "time_limit",
}


class TwilioProvider:
    """``TelephonyProvider`` over the Twilio REST API (the ``twilio`` SDK)."""

    name = "twilio"

    def __init__(self, account_sid: str, auth_token: str, *, client: Any = None,
                 api_base_url: str | None = None, default_url: str | None = None) -> None:
        if client is None:
            from twilio.rest import Client

            # environment={}: the SDK would otherwise read TWILIO_EDGE/REGION itself.
            client = Client(account_sid, auth_token, environment={})
        if api_base_url:
            client.api.base_url = api_base_url.rstrip("/")
        self.client = client
        self.account_sid = account_sid
        self.default_url = default_url

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        from requests import exceptions as rq
        from twilio.base.exceptions import TwilioRestException

        try:
            return fn(*args, **kw)
        except (rq.ConnectTimeout, rq.ConnectionError) as exc:
            if isinstance(exc, rq.ReadTimeout):
                raise CallOutcomeUnknown("", f"Twilio did not answer: {exc}") from None
            raise ProviderUnavailable("twilio_unreachable", str(exc)) from None
        except rq.ReadTimeout as exc:
            raise CallOutcomeUnknown("", f"Twilio did not answer: {exc}") from None
        except TwilioRestException as exc:
            if exc.status == 429 or exc.status >= 500:
                raise ProviderUnavailable(f"twilio_http_{exc.status}", str(exc.msg)) from None
            raise RequestRejected(exc.status, str(exc.msg)) from None

    def start_outbound_call(self, tenant_id: str, to: str, from_: str,
                            metadata: Mapping[str, Any] | None = None) -> str:
        kw = {_CREATE_KEYS[k]: v for k, v in (metadata or {}).items() if k in _CREATE_KEYS}
        if "url" not in kw and "twiml" not in kw:
            if not self.default_url:
                raise RequestRejected(400, "a Twilio call needs metadata 'url' or 'twiml' "
                                           "(or TELEPHONY_TWILIO_VOICE_URL)")
            kw["url"] = self.default_url
        call = self._call(self.client.calls.create, to=to, from_=from_, **kw)
        return str(call.sid)

    def hangup(self, call_id: str) -> None:
        self._call(self.client.calls(call_id).update, status="completed")

    def get_call(self, call_id: str) -> ProviderCall | None:
        try:
            c = self._call(self.client.calls(call_id).fetch)
        except RequestRejected as exc:
            if exc.status == 404:
                return None
            raise
        return ProviderCall(id=str(c.sid), provider="twilio", status=str(c.status),
                            to=str(c.to or ""), from_=str(c._from or ""),
                            raw={"duration": c.duration, "answered_by": c.answered_by})

    def update_call(self, call_id: str, *, twiml: str | None = None,
                    url: str | None = None) -> None:
        check_update(twiml, url)
        if twiml is not None:
            self._call(self.client.calls(call_id).update, twiml=twiml)
        else:
            self._call(self.client.calls(call_id).update, url=url)

    def get_recording(self, call_id: str) -> ProviderRecording | None:
        recs = self._call(self.client.recordings.list, call_sid=call_id, limit=1)
        if not recs:
            return None
        r = recs[0]
        url = None
        if r.uri:
            url = self.client.api.base_url.rstrip("/") + str(r.uri).removesuffix(".json") + ".wav"
        duration = float(r.duration) if r.duration not in (None, "") else None
        return ProviderRecording(call_id=call_id, provider="twilio", status=str(r.status),
                                 url=url, duration_s=duration, raw={"sid": r.sid})
