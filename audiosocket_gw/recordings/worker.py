"""Run the upload/transcription pipeline on its own: ``python -m audiosocket_gw.recordings.worker``.

For a separate uploader process (or a test's child process) of the embedded queue: it
opens ``<data-dir>/recordings.sqlite``, resumes whatever a previous process left (rows stuck in
``uploading`` go back to pending), and uploads, verifies, sweeps and transcribes until
SIGTERM/SIGINT. Settings come from the environment (``settings.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from .pipeline import RecordingPipeline
from .settings import RecordingSettings


async def run(data_dir: str, *, exit_when_idle: bool = False) -> None:
    pipeline = RecordingPipeline(RecordingSettings.from_env(), data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await pipeline.start()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            if exit_when_idle and not (await pipeline.queue.depth())[0]:
                break
    finally:
        await pipeline.stop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--exit-when-idle", action="store_true")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.data_dir, exit_when_idle=args.exit_when_idle))


if __name__ == "__main__":
    main()
