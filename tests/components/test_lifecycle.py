"""Every component on one fake context: constructors subscribe nothing, start()
subscribes, stop() leaves no subscriber and no tick behind."""

from __future__ import annotations

from pathlib import Path

from audiosocket_gw.ami.tracker import CallTracker
from audiosocket_gw.api import CallsApi
from audiosocket_gw.console import ConsoleComponent
from audiosocket_gw.context import Component
from audiosocket_gw.quality.cost import CostMeter
from audiosocket_gw.quality.mos import MosMonitor
from audiosocket_gw.recordings.component import RecordingsComponent
from audiosocket_gw.routing import RoutingComponent
from audiosocket_gw.telephony import AsteriskProvider
from audiosocket_gw.transcripts import TranscriptKeeper
from audiosocket_gw.twilio.callbacks import StatusCallbacks
from audiosocket_gw.watchdogs import Watchdogs
from tests.components.context import Harness, make_context


def subscribers(h: Harness) -> dict[str, int]:
    ev = h.ctx.events
    return {"started": len(ev.started), "ended": len(ev.ended),
            "status_changed": len(ev.status_changed), "ami_message": len(ev.ami_message),
            "ticks": len(h.ticks)}


async def test_components_subscribe_only_between_start_and_stop(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    async with make_context(tmp_path, env={"AIGW_MIXMONITOR_DIR": str(monitor)}) as h:
        ctx, s = h.ctx, h.ctx.settings
        watchdogs = Watchdogs(ctx, h.call_metrics)
        tracker = CallTracker(ctx, None, h.call_metrics, watchdogs=watchdogs)
        provider = AsteriskProvider(ctx, None, tracker, h.call_metrics, s.outbound)
        comps: list[Component] = [
            RoutingComponent(ctx), tracker, watchdogs, CallsApi(ctx, provider),
            MosMonitor(ctx), CostMeter(ctx, s.cost), RecordingsComponent(ctx, s.recording),
            StatusCallbacks(ctx), TranscriptKeeper(ctx), ConsoleComponent(ctx),
        ]
        nothing = {"started": 0, "ended": 0, "status_changed": 0, "ami_message": 0,
                   "ticks": 0}
        assert subscribers(h) == nothing
        assert await h.store.list_calls() == []
        paths = sorted(f"{r.method} {r.path}"  # type: ignore[attr-defined]
                       for c in comps for r in c.routes())
        assert paths == sorted([
            "POST /v1/route", "POST /v1/calls", "GET /v1/calls", "GET /v1/calls/{id}",
            "POST /v1/calls/{id}/hangup", "POST /v1/calls/{id}/twiml",
            "GET /v1/calls/{id}/transcript",
            "GET /v1/calls/{call_id}/recording", "POST /v1/recordings/mixmonitor-done",
            "GET /v1/calls/{call_id}/recording/media", "GET /console", "GET /console/",
            "GET /console/{asset}", "GET /v1/events", "GET /v1/console/calls/{id}/media-link",
            "GET /v1/console/calls/{id}/timeline",
        ])
        started: list[Component] = []
        try:
            for comp in comps:
                await comp.start()
                started.append(comp)
            assert subscribers(h) == {"started": 7, "ended": 8, "status_changed": 3,
                                      "ami_message": 1, "ticks": 1}
        finally:
            for comp in reversed(started):
                await comp.stop()
        assert subscribers(h) == nothing
