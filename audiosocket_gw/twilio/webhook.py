"""Twilio voice-webhook emulation: POST the call to the app's voice URL, follow its TwiML.

Why: an existing Twilio voice app often does not hard-code its Media Streams URL; Twilio
first POSTs the incoming call to the number's *voice URL* and the app answers TwiML such as
``<Connect><Stream url="wss://..."><Parameter .../></Stream></Connect>``. To run such an app
unchanged the gateway does the same: it sends the voice-webhook form (``CallSid``,
``AccountSid``, ``From``, ``To``, ``CallStatus=ringing``, ``Direction=inbound``,
``ApiVersion=2010-04-01``, ``Caller``, ``Called``) signed with ``X-Twilio-Signature``, and
executes the verbs it gets back (:mod:`audiosocket_gw.twilio.twiml_exec`; see
docs/TWIML.md). This module is the HTTP side: forms, signed requests, TwiML fetches,
audio downloads and decoding. The executor runs, in order:

* ``<Connect><Stream url name>`` with ``<Parameter>`` -> the stream to open (returned to the
  caller, the ``twilio-stream`` backend session, with the parameters as
  ``customParameters``);
* ``<Hangup/>`` and ``<Reject/>`` -> end the call (the AudioSocket call is already answered,
  so ``Reject`` is a hang-up with its own reason);
* ``<Pause length>`` -> comfort silence (the pacer writes silence while nothing is queued);
* ``<Play>`` of a WAV URL -> download (bounded size), decode with soundfile, convert to
  8 kHz mono offline, play it and wait until it has been written;
* ``<Redirect>`` -> fetch new TwiML (relative URLs resolved like Twilio does), at most
  :data:`MAX_REDIRECTS` hops;
* ``<Say>``, ``<Gather>``, ``<Record>``, ``<Dial>``, ``<Start>``/``<Stop><Stream>``: see
  docs/TWIML.md; anything else is logged and skipped.

Reaching the end of the document without a ``<Connect>`` hangs up, as Twilio does.
When the app is down, times out, answers an error status or unparsable TwiML,
:class:`WebhookError` is raised and the session applies the agent's fallback.

The ``CallSid``/``AccountSid`` in the form and the auth token signing it come from
:mod:`audiosocket_gw.twilio.ids`, like those of the stream and of every callback. The
auth token is never logged.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlencode, urlsplit

import aiohttp
import numpy as np
import numpy.typing as npt
from yarl import URL

from ..backends.base import CallInfo
from ..dsp.resample import StreamResampler
from .signature import SIGNATURE_HEADER, compute_signature
from .twiml import TwimlError, Verb, parse_twiml

__all__ = [
    "API_VERSION",
    "MAX_REDIRECTS",
    "WebhookError",
    "announcement_pcm",
    "decode_audio_8k",
    "fetch_audio_8k",
    "fetch_twiml",
    "signed_post",
    "twilio_direction",
    "voice_params",
]

log = logging.getLogger("audiosocket_gw.twilio.webhook")

API_VERSION: Final = "2010-04-01"
MAX_REDIRECTS: Final = 5
"""Most ``<Redirect>`` hops followed for one call (Twilio loops forever; we do not)."""
MAX_AUDIO_BYTES: Final = 16 * 1024 * 1024
"""Largest ``<Play>`` file downloaded."""
MAX_PLAY_LOOPS: Final = 10
"""Most repetitions of one ``<Play>`` (``loop="0"`` means 1000 at Twilio)."""
MAX_PAUSE_S: Final = 60
"""Longest ``<Pause>`` honoured."""
RATE: Final = 8000


class WebhookError(Exception):
    """The app's webhook could not be used; ``reason`` is a bounded metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# -- forms --------------------------------------------------------------------------------


def twilio_direction(direction: str) -> str:
    """Twilio's ``Direction`` for our call direction (``outbound`` -> ``outbound-api``)."""
    return "outbound-api" if direction == "outbound" else "inbound"


def voice_params(info: CallInfo, call_sid: str, account_sid: str) -> dict[str, str]:
    """The voice-webhook form Twilio POSTs for an incoming call."""
    return {
        "CallSid": call_sid,
        "AccountSid": account_sid,
        "From": info.from_,
        "To": info.to,
        "Caller": info.from_,
        "Called": info.to,
        "CallStatus": "ringing",
        "Direction": twilio_direction(info.direction),
        "ApiVersion": API_VERSION,
    }


# -- HTTP ---------------------------------------------------------------------------------


async def signed_post(
    http: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str],
    token: str | None,
    time_limit: float,
    *,
    max_body: int = 256 * 1024,
    method: str = "POST",
) -> tuple[int, bytes]:
    """Send ``params`` to ``url`` the way Twilio does; return (status, body).

    ``method="GET"`` sends them in the query string instead (signed over the whole
    URL, as Twilio signs GET requests). Signed with ``X-Twilio-Signature`` when
    ``token`` is set. Raises :class:`aiohttp.ClientError` or :class:`TimeoutError`.
    """
    headers = {"User-Agent": "TwilioProxy/1.1 (audiosocket-gw)"}
    verb = "GET" if method.upper() == "GET" else "POST"
    if verb == "GET":
        if params:
            url += ("&" if urlsplit(url).query else "?") + urlencode(dict(params))
        params = {}
    if token:
        headers[SIGNATURE_HEADER] = compute_signature(token, url, params)
    async with asyncio.timeout(time_limit):
        # encoded=True: the URL goes out byte for byte as signed (no requoting).
        async with http.request(verb, URL(url, encoded=True),
                                data=dict(params) if verb == "POST" else None,
                                headers=headers, allow_redirects=False) as resp:
            body = await resp.content.read(max_body)
            return resp.status, body


async def fetch_twiml(
    http: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str],
    token: str | None,
    time_limit: float,
    method: str = "POST",
) -> list[Verb]:
    """Send the webhook form to ``url`` (``method`` POST or GET) and parse the TwiML.

    Raises :class:`WebhookError` (reason ``unreachable``, ``timeout``, ``http-<class>``
    such as ``http-5xx``, or ``bad-twiml``).
    """
    try:
        status, body = await signed_post(http, url, params, token, time_limit, method=method)
    except TimeoutError:
        raise WebhookError(f"webhook timed out after {time_limit:.1f} s",
                           reason="timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise WebhookError(f"webhook unreachable: {exc}", reason="unreachable") from None
    if not 200 <= status < 300:
        raise WebhookError(f"webhook answered HTTP {status}", reason=f"http-{status // 100}xx")
    try:
        return parse_twiml(body)
    except TwimlError as exc:
        raise WebhookError(f"webhook answered bad TwiML: {exc}", reason="bad-twiml") from None


def _lowpass_interp(mono: npt.NDArray[np.float64], rate: int) -> npt.NDArray[np.float64]:
    """Offline whole-file conversion to 8 kHz for non-integer ratios (44.1 kHz...).

    A 129-tap Hann-windowed sinc low-pass at 3.6 kHz, then linear interpolation: the
    filter removes what would alias, interpolation is then harmless at these rates.
    """
    if rate > RATE:
        cutoff = 3600.0 / rate
        n = np.arange(-64, 65, dtype=np.float64)
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hanning(129)
        taps /= taps.sum()
        mono = np.convolve(mono, taps, mode="same")
    n_out = int(len(mono) * RATE / rate)
    result: npt.NDArray[np.float64] = np.interp(
        np.arange(n_out, dtype=np.float64) * rate / RATE,
        np.arange(len(mono), dtype=np.float64),
        mono,
    )
    return result


def decode_audio_8k(data: bytes) -> bytes:
    """Decode an audio file (WAV and whatever libsndfile reads) to 8 kHz mono slin.

    Integer ratios (16/24/48 kHz) go through :class:`StreamResampler` (anti-aliased
    polyphase); others through an offline windowed-sinc low-pass + interpolation.
    Raises ValueError when the data is not a readable audio file. CPU-bound: run it in
    a thread.
    """
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, TypeError) as exc:
        raise ValueError(f"not a readable audio file: {exc}") from None
    mono = np.asarray(samples.mean(axis=1), dtype=np.float64)
    rate = int(rate)
    if rate != RATE and max(rate, RATE) % min(rate, RATE) == 0:
        pcm = np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2").tobytes()
        rs = StreamResampler(rate, RATE)
        return rs.process(pcm) + rs.flush()
    if rate != RATE:
        mono = _lowpass_interp(mono, rate)
    return np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2").tobytes()


async def fetch_audio_8k(http: aiohttp.ClientSession, url: str, time_limit: float) -> bytes:
    """Download ``url`` (at most :data:`MAX_AUDIO_BYTES`) and decode it to 8 kHz slin.

    Raises :class:`WebhookError` (reasons ``play-fetch``, ``play-decode``).
    """
    try:
        async with asyncio.timeout(time_limit), http.get(url) as resp:
            if resp.status != 200:
                raise WebhookError(f"<Play> URL answered HTTP {resp.status}", reason="play-fetch")
            data = await resp.content.read(MAX_AUDIO_BYTES + 1)
    except TimeoutError:
        raise WebhookError("<Play> download timed out", reason="play-fetch") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise WebhookError(f"<Play> download failed: {exc}", reason="play-fetch") from None
    if len(data) > MAX_AUDIO_BYTES:
        raise WebhookError("<Play> file too large", reason="play-fetch")
    try:
        return await asyncio.to_thread(decode_audio_8k, data)
    except ValueError as exc:
        raise WebhookError(f"<Play> file: {exc}", reason="play-decode") from None


def announcement_pcm(beeps: int = 3, beep_ms: int = 200, gap_ms: int = 150) -> bytes:
    """A short generated "sorry" announcement: ``beeps`` 480 Hz beeps (8 kHz slin)."""
    n = np.arange(beep_ms * RATE // 1000, dtype=np.float64)
    tone = 0.3 * 32767.0 * np.sin(2.0 * math.pi * 480.0 * n / RATE)
    ramp = min(40, len(n) // 2)
    envelope = np.ones(len(n))
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    beep = np.round(tone * envelope).astype("<i2").tobytes()
    gap = bytes(gap_ms * RATE // 1000 * 2)
    return (beep + gap) * beeps
