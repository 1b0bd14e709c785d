"""Recordings inside a real gateway: simulated Asterisk calls over real AudioSocket TCP."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiohttp import web

from audiosocket_gw import audiosocket as asp
from audiosocket_gw.gateway import Gateway
from audiosocket_gw.recordings.component import RecordingsComponent
from audiosocket_gw.recordings.queue import RecordingRow
from audiosocket_gw.testing.simulator.pbx import run_simulation
from audiosocket_gw.twilio.ids import is_sid
from audiosocket_gw.twilio.signature import SIGNATURE_HEADER, validate_signature

from ..helpers import MS, RawPeer, make_config
from ..test_server import ScriptedBackend
from .conftest import s3_client


def tenants_toml(tmp: Path, source: str = "gateway", extra: str = "") -> str:
    path = tmp / "tenants.toml"
    path.write_text(f"""
default_agent = "support"
[tenants.acme]
twilio_account_sid = "AC{'a' * 32}"
[agents.support]
tenant = "acme"
backend = "echo"
record = true
recording_source = "{source}"
[agents.support.extra]
{extra}
""")
    return str(path)


def component(gw: Gateway) -> RecordingsComponent:
    (comp,) = [c for c in gw.components if isinstance(c, RecordingsComponent)]
    return comp


async def wait_rows(comp: RecordingsComponent, ids: list[str], states: set[str],
                    within: float = 15.0) -> list[RecordingRow]:
    deadline = time.monotonic() + within
    while True:
        rows = [await comp.pipeline.get(i) for i in ids]
        if all(r is not None and r.state in states for r in rows):
            return [r for r in rows if r is not None]
        if time.monotonic() > deadline:
            raise AssertionError([(i, r and r.state) for i, r in zip(ids, rows, strict=True)])
        await asyncio.sleep(20 * MS)


def sample(gw: Gateway, name: str, **labels: str) -> float:
    v = gw.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


async def test_stereo_recording_aligns_caller_and_bot_clicks(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    gw = Gateway(make_config(config=tenants_toml(tmp_path)), backend=backend)
    await gw.start()
    try:
        peer = await RawPeer.connect(gw.audiosocket.address)
        cid = peer.send_uuid()
        await peer.read_frames(3)
        silence = np.zeros(160, dtype="<i2")
        click = silence.copy()
        click[40:50] = 20000
        (s,) = backend.sessions
        for _ in range(10):  # a caller who talks on the usual 20 ms cadence
            peer.send(asp.encode_audio(silence.tobytes()))
            await asyncio.sleep(20 * MS)
        # the same instant on both legs: the caller's frame and the bot's next frame
        peer.send(asp.encode_audio(click.tobytes()))
        s.control.play(click.tobytes())
        for _ in range(10):
            await asyncio.sleep(20 * MS)
            peer.send(asp.encode_audio(silence.tobytes()))
        await peer.close()
        comp = component(gw)
        (row,) = await wait_rows(comp, [cid], {"local"})
        data, rate = sf.read(row.path, dtype="int16", always_2d=True)
        assert rate == 8000 and data.shape[1] == 2 and row.channels == 2
        left, right = int(np.argmax(data[:, 0])), int(np.argmax(data[:, 1]))
        assert data[left, 0] == 20000 and data[right, 1] == 20000
        assert abs(left - right) <= 160, (left, right)  # within one 20 ms frame
        assert row.duration_s == pytest.approx(len(data) / 8000)
        base = "http://{}:{}".format(*gw.http_address)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/calls/{cid}/recording") as r:
                body = await r.json()
                assert r.status == 200 and body["status"] == "local" and body["url"] is None
            async with http.get(f"{base}/v1/calls/{uuid.uuid4()}/recording") as r:
                assert r.status == 404
    finally:
        await gw.shutdown(grace=0)


async def test_burst_of_50_calls_every_call_has_one_verified_recording(
    tmp_path: Path, moto_url: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIGW_S3_ENDPOINT", moto_url)
    monkeypatch.setenv("AIGW_S3_BUCKET", bucket)
    monkeypatch.setenv("AIGW_RECORDING_UPLOAD_CONCURRENCY", "4")
    gw = Gateway(make_config(config=tenants_toml(tmp_path)))
    await gw.start()
    try:
        report = await run_simulation(*gw.audiosocket.address, calls=50, seconds=0.3)
        assert all(c.ok for c in report.calls)
        ids = [c.call_id for c in report.calls]
        comp = component(gw)
        rows = await wait_rows(comp, ids, {"verified"}, within=60)
        listing = s3_client(moto_url).list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"] for o in listing) == sorted(r.key for r in rows)
        assert len({r.key for r in rows}) == 50
        for r in rows[:5]:
            assert r.attempts == 1 and r.duration_s >= 0.2 and r.size > 44
        assert sample(gw, "aigw_recording_calls_answered_total", tenant="acme",
                      source="gateway") == 50
        assert sample(gw, "aigw_recordings_captured_total", tenant="acme", source="gateway") == 50
        assert sample(gw, "aigw_recordings_verified_total", tenant="acme") == 50
        assert sample(gw, "aigw_recording_queue_depth", queue="upload") == 0
    finally:
        await gw.shutdown(grace=0)


class SlowWavWriter:
    """Writes a WAV the way MixMonitor does: appended while the call lasts, closed later."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = sf.SoundFile(str(path), "w", samplerate=8000, channels=1, subtype="PCM_16")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            self.f.write(np.full(160, 1000, dtype=np.int16))
            self.f.flush()
            time.sleep(0.02)
        self.f.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


async def test_mixmonitor_file_completes_only_after_hook_or_stable_after_hangup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "monitor"
    monkeypatch.setenv("AIGW_MIXMONITOR_DIR", str(root))
    monkeypatch.setenv("AIGW_MIXMONITOR_STABLE_S", "0.3")
    monkeypatch.setenv("AIGW_MIXMONITOR_POLL_S", "0.05")
    gw = Gateway(make_config(config=tenants_toml(tmp_path, "mixmonitor"),
                             api_token="tok-0123456789abcdef"))
    await gw.start()
    comp = component(gw)
    base = "http://{}:{}".format(*gw.http_address)
    auth = {"Authorization": "Bearer tok-0123456789abcdef"}
    try:
        peers, writers = [], []
        for _ in range(2):
            peer = await RawPeer.connect(gw.audiosocket.address)
            cid = peer.send_uuid()
            writers.append(SlowWavWriter(root / "acme" / f"{cid}.wav"))
            peers.append((peer, cid))
        await peers[0][0].read_frames(2)
        for peer, _ in peers:
            await peer.close()  # hangup; Asterisk is still finishing the files
        (_, hooked), (_, fallback) = peers
        await asyncio.sleep(600 * MS)  # > stable_s, but the files are still growing
        assert await comp.pipeline.get(hooked) is None
        assert await comp.pipeline.get(fallback) is None
        async with aiohttp.ClientSession() as http:
            url = f"{base}/v1/recordings/mixmonitor-done?call_id={hooked}"
            async with http.post(url) as r:
                assert r.status == 401
            writers[0].close()  # Asterisk closes the file, then runs the command
            async with http.post(url, headers=auth) as r:
                assert r.status == 200 and (await r.json())["status"] == "completed"
            async with http.post(url, headers=auth) as r:
                assert (await r.json())["status"] == "duplicate"
            async with http.post(f"{base}/v1/recordings/mixmonitor-done?call_id={uuid.uuid4()}",
                                 headers=auth) as r:
                assert r.status == 404
            async with http.post(f"{base}/v1/recordings/mixmonitor-done?call_id=x;rm",
                                 headers=auth) as r:
                assert r.status == 400
        (row,) = await wait_rows(comp, [hooked], {"local"})
        assert row.size == (root / "acme" / f"{hooked}.wav").stat().st_size
        assert await comp.pipeline.get(fallback) is None
        writers[1].close()
        closed_at = time.monotonic()
        (row,) = await wait_rows(comp, [fallback], {"local"})
        assert time.monotonic() - closed_at >= 0.3  # waited for stability after the close
        info = sf.info(row.path)
        assert row.size == await asyncio.to_thread(os.path.getsize, row.path)
        assert info.frames > 0
        assert row.source == "mixmonitor" and row.channels == 1
    finally:
        await gw.shutdown(grace=0)


async def test_transcription_per_speaker_callback_and_presigned_url(
    tmp_path: Path, moto_url: str, bucket: str, monkeypatch: pytest.MonkeyPatch,
    transcription_fake: Any,
) -> None:
    got: list[tuple[str, dict[str, str], str]] = []

    async def status(request: web.Request) -> web.Response:
        form = await request.post()
        got.append((str(request.url), {k: str(v) for k, v in form.items()},
                    request.headers.get(SIGNATURE_HEADER, "")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    cb_url = "http://{}:{}/status".format(*runner.addresses[0][:2])
    transcription_fake.fail = 1
    for k, v in {"AIGW_S3_ENDPOINT": moto_url, "AIGW_S3_BUCKET": bucket,
                 "AIGW_TRANSCRIBE_URL": transcription_fake.url, "AIGW_TRANSCRIBE_KEY": "sk-x",
                 "AIGW_RECORDING_BACKOFF_S": "0.05", "AIGW_TWILIO_AUTH_TOKEN": "secret",
                 "AIGW_RECORDING_RETENTION_S": "0"}.items():
        monkeypatch.setenv(k, v)
    gw = Gateway(make_config(config=tenants_toml(
        tmp_path, extra=f'recording_status_callback = "{cb_url}"'), echo_delay_ms=100))
    await gw.start()
    try:
        report = await run_simulation(*gw.audiosocket.address, calls=1, seconds=1.0)
        cid = report.calls[0].call_id
        comp = component(gw)
        await wait_rows(comp, [cid], {"deleted"}, within=20)  # after the transcript only
        job = await comp.pipeline.get_job(cid)
        assert job is not None and job.state == "done" and job.attempts == 2
        assert job.speakers is not None and set(job.speakers) == {"caller", "bot"}
        assert all(t.startswith("heard") for t in job.speakers.values())
        reqs = transcription_fake.requests
        assert len(reqs) == 3 and {r["model"] for r in reqs} == {"whisper-1"}
        assert {r["auth"] for r in reqs} == {"Bearer sk-x"}
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(20 * MS)
        ((url, params, sig),) = got
        assert validate_signature("secret", url, params, sig)
        assert is_sid("RE", params["RecordingSid"]) and params["RecordingStatus"] == "completed"
        assert params["CallSid"] == "CA" + uuid.UUID(cid).hex
        assert params["AccountSid"] == "AC" + "a" * 32
        assert params["RecordingDuration"] == "1"
        base = "http://{}:{}".format(*gw.http_address)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/calls/{cid}/recording") as r:
                body = await r.json()
            assert body["status"] == "deleted" and body["transcript"]["status"] == "done"
            async with http.get(body["url"]) as r:
                audio = await r.read()
            async with http.get(params["RecordingUrl"]) as r:
                assert await r.read() == audio
        import hashlib

        assert hashlib.sha256(audio).hexdigest() == body["sha256"]
        assert sample(gw, "aigw_recording_failures_total", stage="transcribe",
                      reason="http_5xx") == 1
        assert sample(gw, "aigw_transcription_seconds_count") == 1
    finally:
        await gw.shutdown(grace=0)
        await runner.cleanup()


def _outside(tree: Path, root: Path) -> list[Path]:
    return [p for p in tree.rglob("*.wav*") if not p.resolve().is_relative_to(root)]


@pytest.mark.parametrize("tenant", ["..", ".", "../../escape", "a/b"])
async def test_recording_never_lands_outside_the_recordings_dir(
        tmp_path: Path, tenant: str) -> None:
    import dataclasses

    data = tmp_path / "data"
    gw = Gateway(make_config(config=tenants_toml(tmp_path), data_dir=str(data)))
    await gw.start()
    try:
        cid = str(uuid.uuid4())
        info = dataclasses.replace(gw.default_call_info(cid), tenant=tenant)
        gw.registry.register(info)
        peer = await RawPeer.connect(gw.audiosocket.address)
        peer.send_uuid(cid)
        await peer.read_frames(3)
        for _ in range(5):
            peer.send(asp.encode_audio(bytes(320)))
            await asyncio.sleep(20 * MS)
        await peer.close()
        await asyncio.sleep(200 * MS)
    finally:
        await gw.shutdown(grace=0)
    root = (data / "recordings").resolve()
    assert _outside(tmp_path, root) == []
    from audiosocket_gw.recordings.mixmonitor import mixmonitor_path, path_inside

    for bad in (tenant, f"{cid}/../.."):
        with pytest.raises(ValueError):
            mixmonitor_path(root, bad, cid if bad == tenant else bad)
    assert path_inside(root, "acme", f"{cid}.wav") == root / "acme" / f"{cid}.wav"


async def test_recordings_dumps_and_databases_are_owner_only(tmp_path: Path) -> None:
    import stat

    old = os.umask(0o022)  # the usual default umask: 0644 files unless we say otherwise
    try:
        data = tmp_path / "data"
        gw = Gateway(make_config(config=tenants_toml(tmp_path), data_dir=str(data)))
        await gw.start()
        try:
            report = await run_simulation(*gw.audiosocket.address, calls=1, seconds=0.3)
            cid = report.calls[0].call_id
            (row,) = await wait_rows(component(gw), [cid], {"local"})
        finally:
            await gw.shutdown(grace=0)
        from audiosocket_gw.dump import CallDump  # the OpenAI backend's debug dump

        dump = CallDump(data / "dumps" / "new", cid)
        dump.close()
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    files = [Path(row.path), data / "aigw.sqlite", data / "recordings.sqlite",
             *(data / "dumps" / "new").iterdir()]
    files += [p for p in data.glob("*.sqlite-*")]
    assert any(p.suffix == ".jsonl" for p in files) and any(p.suffix == ".wav" for p in files)
    assert {str(p.relative_to(data)): oct(mode(p)) for p in files if mode(p) != 0o600} == {}
    dirs = [data / "recordings", Path(row.path).parent, data / "dumps", data / "dumps" / "new"]
    assert {str(d.relative_to(data)): oct(mode(d)) for d in dirs if mode(d) != 0o700} == {}
