"""Wires recordings into the gateway: capture per agent, HTTP routes, hooks, callbacks.

Per agent (tenants TOML): ``record = true`` and ``recording_source`` =
``"gateway"`` (a ``StereoRecorder`` tap on the call) or ``"mixmonitor"`` (wait for
Asterisk's file; the dialplan records it). Extras on the agent:
``recording_status_callback`` (URL receiving Twilio-style recording status POSTs, with
the call's ``CallSid``/``AccountSid`` and signed with the account's auth token: see
:mod:`audiosocket_gw.twilio.ids`).

HTTP (bearer token required when ``config.api_token`` is set):

- ``POST /v1/recordings/mixmonitor-done?call_id=<uuid>``: MixMonitor's post-process
  command; 200 ``{"status": "completed"|"duplicate"}``, 404 when no file, 400 bad id.
- ``GET /v1/calls/{id}/recording``: ``{"call_id", "status", "url", "duration",
  "recording_sid", "size", "sha256", "source", "channels", "attempts", "last_error",
  "transcript": {...} | null}``; 404 when the call has no recording.

On the call record: ``recording_ref`` (``file://...`` once captured, ``s3://bucket/key``
once verified) and ``transcript_ref`` (``aigw-transcript:<call_id>``, served in the GET
above).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from ..dial import MOVED_END_REASON
from ..httpapi import api_error
from ..store.factory import build_recording_queue
from ..twilio.callopts import CallOptions
from ..twilio.ids import account_sid_for, auth_token_for, call_sid_for
from ..twilio.signature import SIGNATURE_HEADER, compute_signature
from .metrics import RecordingMetrics
from .mixmonitor import Expected, MixMonitorWatcher, path_inside
from .pipeline import RecordingPipeline
from .queue import RecordingRow, TranscriptRow
from .recorder import CapturedFile, StereoRecorder, WavWriterThread, threadsafe_done
from .settings import RecordingSettings, backoff_delay
from .urls import recording_url, status_callback_params

if TYPE_CHECKING:
    from ..call import Call
    from ..context import GatewayContext

log = logging.getLogger("audiosocket_gw.recordings")

MAX_CALLBACKS_IN_FLIGHT = 1000


class RecordingsComponent:
    """The gateway component (``start()``/``stop()``) for recordings and transcripts."""

    def __init__(self, ctx: GatewayContext, settings: RecordingSettings) -> None:
        self.ctx = ctx
        self.settings = settings
        s = self.settings
        data_path = ctx.settings.core.data_path
        self.root = data_path / "recordings"
        self.metrics = RecordingMetrics(ctx.metrics.registry)
        self._unsubscribe: list[Callable[[], None]] = []
        st = ctx.settings.store
        # The queue lives beside the call store: shared by every node on PostgreSQL.
        self.pipeline = RecordingPipeline(
            s, data_path, metrics=self.metrics,
            on_verified=self._on_verified, on_failed=self._on_failed,
            on_transcribed=self._on_transcribed,
            queue=build_recording_queue(ctx.store, data_path, node_id=st.node_id),
            takeover_s=max(0.5, st.lease_s / 3))
        self.writer = WavWriterThread()
        self.watcher = MixMonitorWatcher(
            s.mixmonitor_dir, self._mixmonitor_complete,
            stable_s=s.stable_s, poll_s=s.poll_s, missing_s=s.missing_s)
        self._captures: set[asyncio.Task[None]] = set()
        self._callbacks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._recorders: dict[str, StereoRecorder] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/calls/{call_id}/recording", self._get_recording),
            web.get("/v1/calls/{call_id}/recording/media", self._get_media),
            web.post("/v1/recordings/mixmonitor-done", self._mixmonitor_done),
        ]

    async def start(self) -> None:
        self._unsubscribe = [self.ctx.events.started.connect(self._on_call_start),
                             self.ctx.events.ended.connect(self._on_call_end)]
        self.writer.start()
        await self.pipeline.start()
        self.watcher.start()
        log.info("recordings: %s, transcription %s",
                 "local-only" if s_local(self.settings) else f"bucket {self.settings.s3_bucket}",
                 "on" if self.pipeline.transcriber is not None else "off")

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        # Calls have ended (their taps closed): finish the files, queue them, then stop.
        await asyncio.to_thread(self.writer.stop)
        if self._captures:
            await asyncio.wait(list(self._captures), timeout=10.0)
        await self.watcher.stop()
        for task in list(self._callbacks):
            task.cancel()
        await asyncio.gather(*self._callbacks, return_exceptions=True)
        await self.pipeline.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- capture ---------------------------------------------------------------------

    def _spawn(self, coro: Any, into: set[asyncio.Task[None]]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)

    def _on_call_start(self, call: Call) -> None:
        agent = call.info.agent_cfg
        info = call.info
        # A call placed through the Twilio REST API may ask for its own recording
        # (``Record=true``, captured by the gateway) and its own status callback.
        opts = CallOptions.from_metadata(info.metadata)
        if agent is None or not (agent.record or opts.record == "true"):
            return
        callback = opts.recording_status_callback or _callback(agent.extra)
        self.metrics.answered.labels(info.tenant, agent.recording_source).inc()
        if agent.record and agent.recording_source == "mixmonitor":
            # A leg resumed after Dial() is in the parent's MixMonitor file already.
            if not info.metadata.get("parent_call_id"):
                self.watcher.expect(info.call_id, info.tenant, agent.name)
            return
        try:  # a tenant or call id can never place the file outside the root
            final = path_inside(self.root, info.tenant, f"{info.call_id}.wav")
            part = path_inside(self.root, ".part", f"{info.call_id}.wav.part")
        except ValueError as exc:
            log.error("call %s: not recorded: %s", info.call_id, exc)
            return
        fut, done = threadsafe_done(asyncio.get_running_loop())
        rec = StereoRecorder(self.writer, final, part, done)
        call.add_tap(rec)
        self._spawn(self._gateway_capture(info.call_id, info.tenant, agent.name,
                                          callback, fut), self._captures)

    def _on_call_end(self, call: Call) -> None:
        if call.end_reason == MOVED_END_REASON:
            return  # the channel (and its MixMonitor) goes on in Dial()
        self.watcher.ended(call.info.metadata.get("parent_call_id") or call.call_id)

    async def _gateway_capture(self, call_id: str, tenant: str, agent: str, callback: str | None,
                               fut: asyncio.Future[CapturedFile]) -> None:
        result = await fut
        if result.error is not None:
            log.error("call %s: gateway recording failed: %s", call_id, result.error)
            self.metrics.failures.labels("capture", "write_error").inc()
            return
        await self._queue(call_id, tenant, agent, "gateway", result.path, result.channels,
                          result.duration_s, callback)

    async def _mixmonitor_complete(self, exp: Expected, how: str) -> None:
        if how == "missing":
            log.error("call %s: MixMonitor file never appeared", exp.call_id)
            self.metrics.failures.labels("capture", "missing_file").inc()
            return
        try:
            import soundfile as sf

            info = await asyncio.to_thread(sf.info, exp.path)
            channels, duration = int(info.channels), float(info.duration)
        except Exception as exc:
            log.warning("call %s: MixMonitor file unreadable as audio (%s); uploaded as is",
                        exp.call_id, exc)
            channels, duration = 1, 0.0
        agent = self.ctx.tenants.agents.get(exp.agent)
        callback = _callback(agent.extra) if agent is not None else None
        log.info("call %s: MixMonitor file complete (%s)", exp.call_id, how)
        await self._queue(exp.call_id, exp.tenant, exp.agent, "mixmonitor", exp.path,
                          channels, duration, callback)

    async def _queue(self, call_id: str, tenant: str, agent: str, source: str, path: str,
                     channels: int, duration: float, callback: str | None) -> None:
        try:
            row = await self.pipeline.add_capture(
                call_id=call_id, tenant=tenant, agent=agent, source=source, path=path,
                channels=channels, duration_s=duration, callback_url=callback)
        except Exception:
            log.exception("call %s: could not queue the recording", call_id)
            self.metrics.failures.labels("capture", "queue_error").inc()
            return
        if row is None:
            return
        uri = await asyncio.to_thread(lambda: Path(path).resolve().as_uri())
        await self._set_call(call_id, recording_ref=uri)
        if self.settings.local_only and self.settings.public_base:
            self._send_callback(row, "completed")

    async def _set_call(self, call_id: str, **fields: str) -> None:
        try:
            if await self.ctx.store.update_call(call_id, **fields) is None:
                log.debug("call %s: not in the call store; %s not recorded", call_id,
                          ", ".join(fields))
        except Exception:
            log.exception("call %s: could not update the call record", call_id)

    # -- pipeline hooks ----------------------------------------------------------------

    async def _on_verified(self, row: RecordingRow) -> None:
        await self._set_call(row.call_id, recording_ref=f"s3://{self.settings.s3_bucket}/{row.key}")
        self._send_callback(row, "completed")

    async def _on_failed(self, row: RecordingRow) -> None:
        self._send_callback(row, "failed")

    async def _on_transcribed(self, job: TranscriptRow) -> None:
        await self._set_call(job.call_id, transcript_ref=f"aigw-transcript:{job.call_id}")

    # -- status callbacks ----------------------------------------------------------------

    def _send_callback(self, row: RecordingRow, status: str) -> None:
        if not row.callback_url:
            return
        if len(self._callbacks) >= MAX_CALLBACKS_IN_FLIGHT:
            self.metrics.failures.labels("callback", "overflow").inc()
            return
        self._spawn(self._callback(row, status), self._callbacks)

    async def _url(self, row: RecordingRow) -> str | None:
        up = self.pipeline.uploader
        presign = up.presigned_url if up is not None else None
        return await asyncio.to_thread(recording_url, row, self.settings, presign)

    async def _callback(self, row: RecordingRow, status: str) -> None:
        assert row.callback_url is not None
        tenant = self.ctx.tenants.tenants.get(row.tenant)
        agent = self.ctx.tenants.agents.get(row.agent)
        env = self.ctx.settings.environ
        params = status_callback_params(
            row, url=await self._url(row), status=status,
            account_sid=account_sid_for(row.tenant, tenant=tenant, agent=agent, env=env),
            call_sid=call_sid_for(row.call_id))
        token = auth_token_for(tenant=tenant, agent=agent, env=env)
        headers = {}
        if token:
            headers[SIGNATURE_HEADER] = compute_signature(token, row.callback_url, params)
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.callback_timeout_s))
        for attempt in range(1, 4):
            try:
                async with self._http.post(row.callback_url, data=params,
                                           headers=headers) as resp:
                    if resp.status < 500:
                        if resp.status >= 400:
                            self.metrics.failures.labels("callback", f"http_{resp.status}").inc()
                        return
                    reason = f"http_{resp.status // 100}xx"
            except (aiohttp.ClientError, TimeoutError):
                reason = "network"
            self.metrics.failures.labels("callback", reason).inc()
            await asyncio.sleep(backoff_delay(attempt, 1.0, 8.0))
        log.warning("call %s: recording status callback gave up", row.call_id)

    # -- HTTP ----------------------------------------------------------------------------

    async def _mixmonitor_done(self, request: web.Request) -> web.Response:
        raw = request.query.get("call_id", "")
        try:
            call_id = str(uuid.UUID(raw))
        except ValueError:
            return api_error(400, "bad_request", "call_id must be a UUID")
        if await self.pipeline.get(call_id) is not None:
            return web.json_response({"status": "duplicate"})
        tenant: str | None = None
        agent = ""
        if call_id not in self.watcher.pending:
            with contextlib.suppress(Exception):
                rec = await self.ctx.store.get_call(call_id)
                if rec is not None:
                    tenant, agent = rec.tenant, rec.agent
        result = await self.watcher.hook(call_id, tenant, agent)
        if result == "unknown":
            return api_error(404, "not_found", "no MixMonitor file for this call")
        return web.json_response({"status": result})

    async def _get_recording(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        row = await self.pipeline.get(call_id)
        if row is None:
            return api_error(404, "not_found", "no recording for this call")
        job = await self.pipeline.get_job(call_id)
        body: dict[str, Any] = {
            "call_id": row.call_id,
            "status": row.state,
            "url": await self._url(row),
            "duration": round(row.duration_s, 3),
            "recording_sid": row.recording_sid,
            "source": row.source,
            "channels": row.channels,
            "size": row.size,
            "sha256": row.sha256,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "transcript": None if job is None else {
                "status": job.state, "attempts": job.attempts, "engine": job.engine,
                "text": job.text, "speakers": job.speakers, "last_error": job.last_error,
            },
        }
        return web.json_response(body)


    async def _get_media(self, request: web.Request) -> web.StreamResponse:
        """The recording's audio: the local WAV (Range requests honoured), or a
        redirect to the bucket's presigned URL (S3 honours Range too)."""
        row = await self.pipeline.get(request.match_info["call_id"].lower())
        if row is None:
            return api_error(404, "not_found", "no recording for this call")
        path = Path(row.path)
        if await asyncio.to_thread(path.is_file):
            return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                                   "Cache-Control": "private, no-store"})
        url = await self._url(row)
        if url:
            raise web.HTTPFound(url)
        return api_error(404, "not_found", "the recording's media is not available")


def s_local(settings: RecordingSettings) -> bool:
    return settings.local_only


def _callback(extra: Any) -> str | None:
    url = extra.get("recording_status_callback")
    return str(url) if url else None
