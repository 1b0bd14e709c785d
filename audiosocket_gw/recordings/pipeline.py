"""The durable pipeline: queue -> upload + verify -> retention -> transcription.

Runs inside the gateway (``component.py``) or alone (``worker.py``, e.g. a child
process). Everything goes through the persisted queue (``queue.RecordingJobs``:
``recordings.sqlite``, or the shared PostgreSQL store), so the next process on the
queue resumes where the last one stopped.

Tasks (all bounded, none blocks the event loop: boto3, hashing, file removal and
channel splitting run in threads):

- ``upload_concurrency`` upload workers: claim a due ``pending`` row, upload, mark
  ``uploaded``, verify, mark ``verified``; on error back to ``pending`` with an
  exponential backoff (``failed`` after ``max_attempts`` or a permanent error);
- a sweeper: removes the local file of verified rows once ``retention_s`` has passed
  (and their transcription, if any, is finished), marks them ``deleted``;
- a transcription worker (when configured): claims due jobs, transcribes each speaker,
  stores the text, retries with backoff; failures are visible on the job row;
- on a shared queue (several nodes), a takeover loop every ``takeover_s``: the rows of
  nodes without a live lease are adopted when their file is readable here (same path,
  same size; verified ones stay verified, for this node's sweep and transcription),
  else marked ``stranded`` with the reason (verified ones ``deleted``: uploaded, their
  local copy out of reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from ..twilio.ids import recording_sid_for
from .metrics import RecordingMetrics
from .queue import (
    JobState,
    RecordingJobs,
    RecordingRow,
    RecState,
    SqliteRecordingQueue,
    TranscriptRow,
    file_reachable,
)
from .s3 import S3Uploader, UploadError, file_sha256
from .settings import RecordingSettings, backoff_delay
from .transcribe import (
    Transcriber,
    TranscriptionError,
    build_transcriber,
    is_silent,
    split_channels,
)
from .urls import object_key

log = logging.getLogger("audiosocket_gw.recordings")

RowHook = Callable[[RecordingRow], Awaitable[None]]
JobHook = Callable[[TranscriptRow], Awaitable[None]]


class RecordingPipeline:
    """Owns the queue and its workers; ``add_capture`` is the single way in."""

    def __init__(
        self,
        settings: RecordingSettings,
        data_dir: str | Path,
        *,
        metrics: RecordingMetrics | None = None,
        on_verified: RowHook | None = None,
        on_failed: RowHook | None = None,
        on_transcribed: JobHook | None = None,
        transcriber: Transcriber | None = None,
        clock: Callable[[], float] = time.time,
        queue: RecordingJobs | None = None,
        takeover_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.queue: RecordingJobs = (
            queue if queue is not None
            else SqliteRecordingQueue(self.data_dir / "recordings.sqlite"))
        self.takeover_s = takeover_s
        self.metrics = metrics or RecordingMetrics(CollectorRegistry())
        self.uploader = None if settings.local_only else S3Uploader(settings)
        self.transcriber = transcriber
        self.on_verified = on_verified
        self.on_failed = on_failed
        self.on_transcribed = on_transcribed
        self.clock = clock
        self._wake_upload = asyncio.Event()
        self._wake_jobs = asyncio.Event()
        self._wake_sweep = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.queue.open()
        fixed = await self.queue.recover()
        if any(fixed):
            log.info("recording queue: resumed %d uploads and %d transcriptions", *fixed)
        if self.transcriber is None and self.settings.transcription_enabled:
            self.transcriber = build_transcriber(self.settings)
            if self.transcriber is None:
                log.warning("transcription: faster-whisper not importable; skipped")
        await self._update_depth()
        loop = asyncio.get_running_loop()
        if self.uploader is not None:
            for i in range(self.settings.upload_concurrency):
                self._tasks.append(loop.create_task(self._upload_loop(), name=f"rec-upload-{i}"))
            self._tasks.append(loop.create_task(self._periodically(
                self.sweep_once, self.settings.sweep_s, "retention sweep"), name="rec-sweep"))
            if self.queue.shared:
                self._tasks.append(loop.create_task(self._periodically(
                    self.take_over_orphans, self.takeover_s, "recording takeover"),
                    name="rec-takeover"))
        if self.queue.shared:
            self._tasks.append(loop.create_task(self._periodically(
                self.erase_requested, self.takeover_s,
                "erasing recordings deleted through another node"), name="rec-erase"))
        if self.transcriber is not None:
            self._tasks.append(loop.create_task(self._job_loop(), name="rec-transcribe"))

    async def stop(self, grace: float = 5.0) -> None:
        """Let running attempts finish for ``grace`` s; anything cut off resumes next start."""
        self._stopping = True
        for ev in (self._wake_upload, self._wake_jobs, self._wake_sweep):
            ev.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.transcriber is not None:
            await self.transcriber.aclose()
        await self.queue.close()

    def wake(self) -> None:
        self._wake_upload.set()
        self._wake_jobs.set()

    # -- in --------------------------------------------------------------------------

    async def add_capture(
        self,
        *,
        call_id: str,
        tenant: str,
        agent: str,
        source: str,
        path: str,
        channels: int,
        duration_s: float,
        callback_url: str | None = None,
    ) -> RecordingRow | None:
        """Queue a complete recording file. Returns the row, or None if the call
        already had one (a duplicate hook, a second completion path): idempotent."""
        sha, size = await asyncio.to_thread(file_sha256, path)
        now = self.clock()
        state = RecState.LOCAL if self.uploader is None else RecState.PENDING
        row = RecordingRow(
            call_id=call_id, tenant=tenant, agent=agent, source=source, path=path,
            key=object_key(self.settings.s3_prefix, tenant, call_id),
            recording_sid=recording_sid_for(call_id), state=state.value, attempts=0, sha256=sha,
            size=size, duration_s=duration_s, channels=channels, captured_at=now,
            next_attempt_at=now, callback_url=callback_url,
        )
        added = await self.queue.add(row)
        if not added:
            return None
        self.metrics.captured.labels(tenant, source).inc()
        if self.uploader is None and self.transcriber is not None:
            await self.queue.add_job(call_id, now)
        await self._update_depth()
        self.wake()
        return row

    async def get(self, call_id: str) -> RecordingRow | None:
        return await self.queue.get(call_id)

    async def page(self, *, tenant: str | None = None, call_id: str | None = None,
                   limit: int = 50, offset: int = 0) -> list[RecordingRow]:
        """Recordings newest first (the Twilio REST ``Recordings`` lists)."""
        return await self.queue.page(tenant=tenant, call_id=call_id, limit=limit,
                                     offset=offset)

    async def delete(self, row: RecordingRow) -> bool:
        """Forget ``row`` and remove its local file and its object (REST ``DELETE``).

        An upload attempt running at that moment finds no row to update and removes
        the object it stored itself (``_drop_if_deleted``).

        With a shared store, the file of another node's recording is on that node's
        disk: the row is marked ``erasing`` instead, which hides it at once, and that
        node erases the file, the object and the row (``erase_requested``, within
        ``takeover_s``; for a node that is down, a survivor that reads the file, or the
        node when it is back).
        """
        if self.queue.shared and row.node_id != self.queue.node_id:
            asked = await self.queue.request_erase(row.call_id)
            if row.state in ("uploaded", "verified", "deleted"):
                await self._delete_object(row)
            await self._update_depth()
            return asked
        removed = await self.queue.remove(row.call_id)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.remove, row.path)
        if row.state in ("uploaded", "verified", "deleted"):
            await self._delete_object(row)
        await self._update_depth()
        return bool(removed)

    async def erase_requested(self) -> int:
        """Erase this node's recordings deleted through another node (``delete``): the
        file, the object (an upload may have finished since), then the row; and those
        of a lost node whose file is readable here (a shared spool; otherwise they wait
        for that node). Returns how many."""
        rows = [row for row in await self.queue.to_erase()
                if row.node_id == self.queue.node_id
                or await asyncio.to_thread(file_reachable, row.path, row.size)]
        for row in rows:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, row.path)
            await self._delete_object(row)
            await self.queue.remove(row.call_id)
            log.info("recording %s: erased (deleted through another node)", row.recording_sid)
        if rows:
            await self._update_depth()
        return len(rows)

    async def _drop_if_deleted(self, row: RecordingRow) -> None:
        """An upload finished after its recording was deleted (``delete`` found no
        object to remove yet): remove the object it stored. A row taken over by another
        node is still there (that node uploads to the same key): left alone."""
        if await self.queue.get(row.call_id) is None:
            await self._delete_object(row)

    async def _delete_object(self, row: RecordingRow) -> None:
        if self.uploader is None:
            return
        try:
            await asyncio.to_thread(self.uploader.delete_object, row.key)
        except Exception as exc:
            log.warning("recording %s: object %s not deleted: %s", row.recording_sid,
                        row.key, exc)

    async def get_job(self, call_id: str) -> TranscriptRow | None:
        return await self.queue.get_job(call_id)

    async def _update_depth(self) -> None:
        up, jobs = await self.queue.depth()
        self.metrics.queue_depth.labels("upload").set(up)
        self.metrics.queue_depth.labels("transcribe").set(jobs)

    async def _idle(self, event: asyncio.Event, next_due: float | None, cap: float) -> None:
        timeout = cap if next_due is None else max(0.0, min(cap, next_due - self.clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        event.clear()

    # -- uploads ---------------------------------------------------------------------

    async def _upload_loop(self) -> None:
        while not self._stopping:
            try:
                row = await self.queue.claim_upload(self.clock())
                if row is None:
                    due = await self.queue.next_due()
                    await self._idle(self._wake_upload, due, 1.0)
                    continue
                await self._upload_one(row)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("upload worker error")
                await asyncio.sleep(1.0)

    async def _upload_one(self, row: RecordingRow) -> None:
        assert self.uploader is not None
        up = self.uploader
        q = self.queue
        try:
            await asyncio.to_thread(up.upload, row.path, row.key, row.sha256, row.size,
                                    verify=False)
            if not await q.set_state(row.call_id, RecState.UPLOADED, uploaded_at=self.clock()):
                log.warning("call %s: recording no longer ours (deleted or taken over by "
                            "another node); upload attempt dropped", row.call_id)
                await self._drop_if_deleted(row)
                return
            await asyncio.to_thread(up.verify, row.key, row.sha256, row.size)
        except UploadError as exc:
            await self._upload_failed(row, exc)
            return
        now = self.clock()
        if not await q.set_state(row.call_id, RecState.VERIFIED, verified_at=now,
                                 last_error=None):
            log.warning("call %s: recording no longer ours after its upload; "
                        "no callback from this node", row.call_id)
            await self._drop_if_deleted(row)
            return
        self.metrics.verified.labels(row.tenant).inc()
        self.metrics.upload_seconds.observe(max(0.0, now - row.captured_at))
        log.info("call %s: recording uploaded and verified (%d bytes, attempt %d)",
                 row.call_id, row.size, row.attempts)
        if self.transcriber is not None:
            await q.add_job(row.call_id, now)
            self._wake_jobs.set()
        await self._update_depth()
        self._wake_sweep.set()
        verified = await q.get(row.call_id)
        if self.on_verified is not None and verified is not None:
            try:
                await self.on_verified(verified)
            except Exception:
                log.exception("call %s: on_verified hook failed", row.call_id)

    async def _upload_failed(self, row: RecordingRow, exc: UploadError) -> None:
        self.metrics.failures.labels("upload", exc.reason).inc()
        now = self.clock()
        if exc.permanent or row.attempts >= self.settings.max_attempts:
            log.error("call %s: recording upload failed for good after %d attempts: %s",
                      row.call_id, row.attempts, exc)
            if not await self.queue.set_state(row.call_id, RecState.FAILED,
                                              last_error=str(exc)[:500]):
                return
            await self._update_depth()
            if self.on_failed is not None:
                failed = await self.queue.get(row.call_id)
                if failed is not None:
                    await self.on_failed(failed)
            return
        delay = backoff_delay(row.attempts, self.settings.backoff_s, self.settings.backoff_max_s)
        log.warning("call %s: recording upload attempt %d failed (%s); retry in %.1f s",
                    row.call_id, row.attempts, exc, delay)
        await self.queue.set_state(row.call_id, RecState.PENDING,
                                   next_attempt_at=now + delay, last_error=str(exc)[:500])

    async def _periodically(self, work: Callable[[], Awaitable[object]], every_s: float,
                            what: str) -> None:
        """Run ``work`` now, then every ``every_s`` (sooner when ``_wake_sweep`` is
        set), until the pipeline stops; a failing round is logged and the next one runs."""
        while not self._stopping:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", what)
            await self._idle(self._wake_sweep, None, every_s)

    # -- retention -------------------------------------------------------------------

    async def sweep_once(self) -> int:
        """Delete local files of verified recordings past retention; returns how many."""
        rows = await self.queue.due_for_deletion(self.clock(), self.settings.retention_s)
        for row in rows:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.remove, row.path)
            await self.queue.set_state(row.call_id, RecState.DELETED, deleted_at=self.clock())
        return len(rows)

    # -- a dead node's recordings ------------------------------------------------------

    async def take_over_orphans(self) -> tuple[int, int]:
        """Adopt the rows of nodes without a live lease whose file is readable here;
        mark the others ``stranded`` (a verified one, already uploaded: ``deleted``,
        its local copy left on the lost node). Returns (adopted, stranded)."""
        adopted = stranded = 0
        me = self.queue.node_id
        for row in await self.queue.orphans():
            if await asyncio.to_thread(file_reachable, row.path, row.size):
                if await self.queue.adopt(row, self.clock()):
                    adopted += 1
                    log.warning("call %s: recording of lost node %s taken over (%s)",
                                row.call_id, row.node_id, row.state)
            elif row.state == RecState.VERIFIED.value:
                if await self.queue.strand(
                        row, f"local copy on lost node {row.node_id} not reachable from "
                             f"{me}; not deleted here (the stored copy is complete)"):
                    log.warning("call %s: verified recording of lost node %s: its local "
                                "file is not readable here; left in place", row.call_id,
                                row.node_id)
            elif await self.queue.strand(
                    row, f"node {row.node_id} lost; its file is not readable from {me} "
                         "(share the recordings directory to let survivors upload it)"):
                stranded += 1
                self.metrics.failures.labels("upload", "stranded").inc()
                log.error("call %s: recording of lost node %s stranded: file not readable "
                          "here", row.call_id, row.node_id)
        if adopted:
            await self._update_depth()
            for ev in (self._wake_upload, self._wake_jobs, self._wake_sweep):
                ev.set()
        return adopted, stranded

    # -- transcription ---------------------------------------------------------------

    async def _job_loop(self) -> None:
        while not self._stopping:
            try:
                job = await self.queue.claim_job(self.clock())
                if job is None:
                    due = await self.queue.next_job_due()
                    await self._idle(self._wake_jobs, due, 1.0)
                    continue
                await self._transcribe_one(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("transcription worker error")
                await asyncio.sleep(1.0)

    async def _transcribe_one(self, job: TranscriptRow) -> None:
        assert self.transcriber is not None
        tr = self.transcriber
        row = await self.queue.get(job.call_id)
        try:
            if row is None or not await asyncio.to_thread(os.path.exists, row.path):
                raise TranscriptionError("missing_file", "recording file is gone")
            parts = await asyncio.to_thread(split_channels, row.path)
            speakers: dict[str, str] = {}
            for name, wav, _secs in parts:
                silent = await asyncio.to_thread(is_silent, wav)
                speakers[name] = "" if silent else await tr.transcribe(
                    wav, f"{job.call_id}-{name}.wav")
        except TranscriptionError as exc:
            await self._job_failed(job, exc.reason, str(exc), permanent=exc.reason ==
                                   "missing_file")
            return
        except Exception as exc:
            await self._job_failed(job, "error", f"{type(exc).__name__}: {exc}")
            return
        now = self.clock()
        text = "\n".join(f"{k}: {v}" for k, v in speakers.items() if v)
        await self.queue.set_job(job.call_id, JobState.DONE, done_at=now, engine=tr.engine,
                                 text=text, speakers=speakers, last_error=None)
        self.metrics.transcription_seconds.observe(max(0.0, now - job.created_at))
        await self._update_depth()
        self._wake_sweep.set()
        done = await self.queue.get_job(job.call_id)
        if self.on_transcribed is not None and done is not None:
            try:
                await self.on_transcribed(done)
            except Exception:
                log.exception("call %s: on_transcribed hook failed", job.call_id)

    async def _job_failed(self, job: TranscriptRow, reason: str, msg: str, *,
                          permanent: bool = False) -> None:
        self.metrics.failures.labels("transcribe", reason).inc()
        if permanent or job.attempts >= self.settings.max_attempts:
            log.error("call %s: transcription failed for good: %s", job.call_id, msg)
            await self.queue.set_job(job.call_id, JobState.FAILED, last_error=msg[:500])
            await self._update_depth()
            return
        delay = backoff_delay(job.attempts, self.settings.backoff_s, self.settings.backoff_max_s)
        log.warning("call %s: transcription attempt %d failed (%s); retry in %.1f s",
                    job.call_id, job.attempts, msg, delay)
        await self.queue.set_job(job.call_id, JobState.PENDING,
                                 next_attempt_at=self.clock() + delay, last_error=msg[:500])
