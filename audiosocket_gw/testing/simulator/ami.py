"""An AMI server that behaves like Asterisk 22 (docs/PROTOCOLS.md §2).

For tests, demos and benchmarks of the AMI side of the gateway: a TCP server on
asyncio that speaks the wire format of ``audiosocket_gw.ami.protocol`` and plays
realistic event sequences.

What it does, as Asterisk does:

* Banner ``Asterisk Call Manager/11.0.0`` (one CRLF), ``Login`` (success then
  ``FullyBooted``; failure: ``Authentication failed`` then close), ``Ping``,
  ``Hangup``, ``CoreShowChannels`` (list: ``EventList: start``, one
  ``CoreShowChannel`` per channel, ``CoreShowChannelsComplete``), ``Getvar``,
  ``Setvar``, ``Command`` (``Output:`` lines). Unknown actions: ``Response: Error``
  ``Message: Invalid/unknown command``. Actions before login: ``Permission denied``.
* ``Originate`` with ``Async: true``: an immediate ``Success`` / "Originate
  successfully queued", then events with ``Uniqueid`` = the ``ChannelId``, and the
  ``OriginateResponse`` (with the ActionID) only once the call is answered or
  failed. The outcome is scripted per destination number (``outcomes``): answered
  (``Reason: 4``), busy (Hangup cause 17, ``Failure`` ``Reason: 5``), no-answer
  (cause 19, ``Reason: 3``), congestion (cause 34, ``Reason: 8``), failed (no
  channel at all, ``Reason: 0``). On failure ``Channel`` is the dial string.
  ``machine``/``human`` outcomes answer and run ``AMD()`` (two VarSets in the same
  ms). Without ``Async`` it answers ``Error`` "Originate failed" for a failing
  outcome, like Asterisk.
* Answered calls run ``[aigw-outbound]``: Newexten ``AudioSocket`` with ``AppData``
  ``<AIGW_CALL_ID>,<AIGW_AUDIOSOCKET>`` and, when ``connect_audiosocket`` is on and
  the AudioSocket address variable is set, a real AudioSocket call to the gateway
  (``simulator.pbx.run_simulation`` with ``call_id`` = the ChannelId). The channel
  hangs up (``RTPAUDIOQOS*`` VarSets, then ``Hangup`` cause 16) when the AudioSocket
  leg ends, or after ``talk_s`` without one.
* ``inbound_call()`` plays an inbound PJSIP call, ``talk()`` the TALK_DETECT pair,
  ``rtcp()`` the RTCP reports, ``end_channel()`` a hangup from the far end,
  ``drop_sessions()`` a disconnect in the middle, ``send_raw()`` arbitrary bytes
  (malformed input tests).

The scheduling uses ``asyncio`` timers only: every delay is a constructor argument,
so tests run the whole script in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from ...ami.protocol import AmiMessage, AmiParser, AmiProtocolError

log = logging.getLogger("audiosocket_gw.testing.simulator.ami")

BANNER: Final = b"Asterisk Call Manager/11.0.0\r\n"

OutcomeKind = Literal["answered", "busy", "no-answer", "congestion", "failed", "machine", "human"]

# outcome -> (Hangup cause before answer, OriginateResponse Reason)
_FAILURES: Final[dict[str, tuple[int | None, int]]] = {
    "busy": (17, 5),
    "no-answer": (19, 3),
    "congestion": (34, 8),
    "failed": (None, 0),
}
_STATE_DESC: Final = {0: "Down", 3: "Dialing", 4: "Ring", 5: "Ringing", 6: "Up", 7: "Busy"}


@dataclass
class Outcome:
    """How a scripted destination behaves.

    ``ring_s`` before answer (or failure), ``talk_s`` of talk when no AudioSocket
    leg is run, ``amd`` the two AMD VarSets for ``machine``/``human``.
    """

    kind: OutcomeKind = "answered"
    ring_s: float | None = None
    talk_s: float | None = None
    caller_audio: bool = True


@dataclass
class SimChannel:
    """A live channel as the simulator's ``CoreShowChannels`` reports it."""

    uniqueid: str
    name: str
    context: str
    exten: str
    caller: str = "<unknown>"
    state: int = 0
    linkedid: str = ""
    application: str = ""
    app_data: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class _Session(asyncio.Protocol):
    """One AMI client connection."""

    def __init__(self, sim: AmiSimulator) -> None:
        self.sim = sim
        self.parser = AmiParser()
        self.transport: asyncio.Transport | None = None
        self.authenticated = False
        self.events_on = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sim.sessions.add(self)
        transport.write(BANNER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.sessions.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except AmiProtocolError:
            self.close()
            return
        for msg in messages:
            self.sim.handle(self, msg)

    def write(self, headers: Sequence[tuple[str, str]]) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(_encode(headers))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _encode(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n"


class AmiSimulator:
    """The simulated Asterisk manager (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "aigw",
        secret: str = "secret",
        outcomes: dict[str, OutcomeKind | Outcome] | None = None,
        default_outcome: OutcomeKind = "answered",
        ring_s: float = 0.05,
        talk_s: float = 0.3,
        connect_audiosocket: bool = False,
        audiosocket_seconds: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.secret = secret
        self.outcomes: dict[str, Outcome] = {
            k: (v if isinstance(v, Outcome) else Outcome(v)) for k, v in (outcomes or {}).items()
        }
        self.default_outcome = Outcome(default_outcome)
        self.ring_s = ring_s
        self.talk_s = talk_s
        self.connect_audiosocket = connect_audiosocket
        self.audiosocket_seconds = audiosocket_seconds
        self.sessions: set[_Session] = set()
        self.channels: dict[str, SimChannel] = {}
        self.actions: list[AmiMessage] = []
        """Every action received, in order (tests assert on what the client sent)."""
        self.ended: list[tuple[str, int]] = []
        """(uniqueid, cause) of every channel hung up."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = itertools.count(1)
        self._uid = itertools.count(1)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.drop_sessions()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> AmiSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def drop_sessions(self) -> None:
        """Close every AMI connection (a network cut or an Asterisk restart)."""
        for s in list(self.sessions):
            s.close()

    def send_raw(self, data: bytes) -> None:
        """Write ``data`` to every session as is (malformed input tests)."""
        for s in list(self.sessions):
            if s.transport is not None:
                s.transport.write(data)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events -------------------------------------------------------------------

    def emit(self, event: str, headers: Sequence[tuple[str, str]]) -> None:
        """Send one event to every logged-in session that asked for events."""
        msg = [("Event", event), ("Privilege", "call,all"), *headers]
        for s in list(self.sessions):
            if s.authenticated and s.events_on:
                s.write(msg)

    def _snapshot(self, ch: SimChannel) -> list[tuple[str, str]]:
        return [
            ("Channel", ch.name),
            ("ChannelState", str(ch.state)),
            ("ChannelStateDesc", _STATE_DESC.get(ch.state, "Unknown")),
            ("CallerIDNum", ch.caller),
            ("CallerIDName", "<unknown>"),
            ("ConnectedLineNum", "<unknown>"),
            ("ConnectedLineName", "<unknown>"),
            ("Language", "en"),
            ("AccountCode", ""),
            ("Context", ch.context),
            ("Exten", ch.exten),
            ("Priority", "1"),
            ("Uniqueid", ch.uniqueid),
            ("Linkedid", ch.linkedid or ch.uniqueid),
        ]

    def _new_channel(self, uniqueid: str, name: str, context: str, exten: str,
                     caller: str = "<unknown>", state: int = 0) -> SimChannel:
        ch = SimChannel(uniqueid=uniqueid, name=name, context=context, exten=exten,
                        caller=caller, state=state)
        self.channels[uniqueid] = ch
        self.emit("Newchannel", self._snapshot(ch))
        return ch

    def _newstate(self, ch: SimChannel, state: int) -> None:
        ch.state = state
        self.emit("Newstate", self._snapshot(ch))

    def _newexten(self, ch: SimChannel, app: str, data: str) -> None:
        ch.application, ch.app_data = app, data
        self.emit("Newexten", [*self._snapshot(ch), ("Extension", ch.exten),
                               ("Application", app), ("AppData", data)])

    def varset(self, ch: SimChannel, name: str, value: str) -> None:
        """A ``VarSet`` event (value C-escaped as Asterisk does)."""
        ch.variables[name] = value
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        self.emit("VarSet", [*self._snapshot(ch), ("Variable", name), ("Value", escaped)])

    def talk(self, uniqueid: str, duration_ms: int | None = None) -> None:
        """``ChannelTalkingStart`` (and ``Stop`` with ``Duration`` when given)."""
        ch = self.channels.get(uniqueid)
        if ch is None:
            return
        if duration_ms is None:
            self.emit("ChannelTalkingStart", self._snapshot(ch))
        else:
            self.emit("ChannelTalkingStop", [*self._snapshot(ch), ("Duration", str(duration_ms))])

    def rtcp(self, uniqueid: str) -> None:
        """One ``RTCPSent`` and one ``RTCPReceived``, as chan_pjsip emits every 5 s."""
        ch = self.channels.get(uniqueid)
        if ch is None:
            return
        report = [("Report0FractionLost", "0"), ("Report0CumulativeLost", "0"),
                  ("Report0IAJitter", "3"), ("Report0HighestSequence", "600")]
        self.emit("RTCPSent", [*self._snapshot(ch), ("SSRC", "0x1234"), ("PT", "200(SR)"),
                               ("ReportCount", "1"), ("SentPackets", "250"),
                               ("SentOctets", "40000"), ("MES", "88.1"), *report])
        self.emit("RTCPReceived", [*self._snapshot(ch), ("SSRC", "0x5678"), ("PT", "201(RR)"),
                                   ("ReportCount", "1"), ("RTT", "0.0010"), ("MES", "88.0"),
                                   *report])

    def end_channel(self, uniqueid: str, cause: int = 16, *, qos: bool = True) -> bool:
        """Hang the channel up: RTPAUDIOQOS VarSets (answered PJSIP), then ``Hangup``."""
        ch = self.channels.pop(uniqueid, None)
        if ch is None:
            return False
        if qos and ch.state == 6 and ch.name.startswith("PJSIP/"):
            self.varset(ch, "RTPAUDIOQOS",
                        "ssrc=1234;themssrc=5678;lp=0;rxjitter=0.000000;rxcount=236;"
                        "txjitter=0.000250;txcount=600;rlp=0;rtt=0.000000;rxmes=0.000000;"
                        "txmes=88.087887")
            self.varset(ch, "RTPAUDIOQOSJITTER",
                        "minrxjitter=000.000000;maxrxjitter=000.000000;avgrxjitter=0.000000")
            self.varset(ch, "RTPAUDIOQOSLOSS",
                        "  minrxlost=000.000000;maxrxlost=000.000000;avgrxlost=0.000000")
            self.varset(ch, "RTPAUDIOQOSRTT", "minrtt=000.000000;maxrtt=000.000000")
            self.varset(ch, "RTPAUDIOQOSMES", "minrxmes=088.087887;maxrxmes=088.087887")
        self.emit("SoftHangupRequest", [*self._snapshot(ch), ("Cause", str(cause or 16))])
        self.emit("Hangup", [*self._snapshot(ch), ("Cause", str(cause)),
                             ("Cause-txt", "Normal Clearing" if cause in (0, 16) else "")])
        self.ended.append((uniqueid, cause))
        ch.ended.set()
        return True

    # -- actions ------------------------------------------------------------------

    def handle(self, s: _Session, msg: AmiMessage) -> None:
        action = (msg.get("Action") or "").strip().lower()
        self.actions.append(msg)
        aid = msg.action_id
        base: list[tuple[str, str]] = [("ActionID", aid)] if aid is not None else []

        def reply(response: str, message: str, *extra: tuple[str, str]) -> None:
            s.write([("Response", response), *base, ("Message", message), *extra])

        if not action:
            reply("Error", "Missing action in request")
            return
        if action == "login":
            if msg.get("Username") == self.username and msg.get("Secret") == self.secret:
                s.authenticated = True
                s.events_on = (msg.get("Events") or "on").lower() != "off"
                reply("Success", "Authentication accepted")
                s.write([("Event", "FullyBooted"), ("Privilege", "system,all"),
                         ("Uptime", "100"), ("LastReload", "100"), ("Status", "Fully Booted")])
            else:
                reply("Error", "Authentication failed")
                s.close()
            return
        if action == "logoff":
            s.write([("Response", "Goodbye"), *base, ("Message", "Thanks for all the fish.")])
            s.close()
            return
        if not s.authenticated:
            reply("Error", "Permission denied")
            return
        if action == "ping":
            s.write([("Response", "Success"), *base, ("Ping", "Pong"),
                     ("Timestamp", f"{time.time():.6f}")])
        elif action == "originate":
            self._originate(s, msg, reply)
        elif action == "hangup":
            name = msg.get("Channel") or ""
            cause = _int(msg.get("Cause"), 16)
            hit = [c for c in self.channels.values() if c.name == name or c.uniqueid == name]
            if not hit:
                reply("Error", "No such channel")
                return
            reply("Success", "Channel Hungup")
            for ch in hit:
                self.end_channel(ch.uniqueid, cause)
        elif action == "coreshowchannels":
            chans = list(self.channels.values())
            reply("Success", "Channels will follow", ("EventList", "start"))
            now = time.monotonic()
            for ch in chans:
                secs = int(now - ch.created)
                s.write([("Event", "CoreShowChannel"), *base, *self._snapshot(ch),
                         ("Application", ch.application), ("ApplicationData", ch.app_data),
                         ("Duration", f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"),
                         ("BridgeId", "")])
            s.write([("Event", "CoreShowChannelsComplete"), *base, ("EventList", "Complete"),
                     ("ListItems", str(len(chans)))])
        elif action == "getvar":
            found = self._find(msg.get("Channel"))
            var = msg.get("Variable") or ""
            value = found.variables.get(var, "") if found is not None else ""
            s.write([("Response", "Success"), *base, ("Variable", var), ("Value", value)])
        elif action == "setvar":
            target = self._find(msg.get("Channel"))
            if target is None:
                reply("Error", "No such channel")
                return
            self.varset(target, msg.get("Variable") or "", msg.get("Value") or "")
            reply("Success", "Variable Set")
        elif action == "command":
            cmd = msg.get("Command") or ""
            out = [f"{len(self.channels)} active channels"] if "channels" in cmd else [
                f"No such command '{cmd}'"]
            s.write([("Response", "Success"), *base, ("Message", "Command output follows"),
                     *(("Output", line) for line in out)])
        else:
            reply("Error", "Invalid/unknown command")

    def _find(self, name: str | None) -> SimChannel | None:
        for ch in self.channels.values():
            if name in (ch.name, ch.uniqueid):
                return ch
        return None

    def _originate(self, s: _Session, msg: AmiMessage, reply: _Reply) -> None:
        dial = msg.get("Channel") or ""
        if not dial or "/" not in dial:
            reply("Error", "Channel not specified")
            return
        number = dial.split("/", 1)[1].split("@", 1)[0]
        outcome = self.outcomes.get(number, self.default_outcome)
        is_async = (msg.get("Async") or "false").lower() in ("true", "yes", "1")
        if not is_async:
            if outcome.kind in _FAILURES:
                reply("Error", "Originate failed")
                return
            reply("Success", "Originate successfully queued")
        else:
            reply("Success", "Originate successfully queued")
        uid = msg.get("ChannelId") or f"{int(time.time())}.{next(self._uid)}"
        self._spawn(self._run_originate(msg, dial, number, uid, outcome, is_async))

    async def _run_originate(self, msg: AmiMessage, dial: str, number: str, uid: str,
                             outcome: Outcome, is_async: bool) -> None:
        aid = msg.action_id
        variables = msg.variables()
        context = msg.get("Context") or "aigw-outbound"
        exten = msg.get("Exten") or "s"
        ring_s = self.ring_s if outcome.ring_s is None else outcome.ring_s

        def originate_response(response: str, reason: int, channel: str) -> None:
            if not is_async:
                return
            headers = [("ActionID", aid)] if aid is not None else []
            headers += [("Response", response), ("Channel", channel), ("Context", context),
                        ("Exten", exten), ("Application", ""), ("Data", ""),
                        ("Reason", str(reason)), ("Uniqueid", uid),
                        ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>")]
            self.emit("OriginateResponse", headers)

        if outcome.kind == "failed":
            await asyncio.sleep(ring_s / 5)
            originate_response("Failure", 0, dial)
            return
        trunk = dial.split("@", 1)[1] if "@" in dial else "trunk"
        name = f"PJSIP/{trunk}-{next(self._seq):08x}"
        ch = self._new_channel(uid, name, context, exten, caller=number)
        for k, v in variables.items():
            self.varset(ch, k, v)
        self._newstate(ch, 5)
        await asyncio.sleep(ring_s)
        if uid not in self.channels:  # hung up by an action while ringing
            originate_response("Failure", 1, dial)
            return
        if outcome.kind in _FAILURES:
            cause, reason = _FAILURES[outcome.kind]
            self.end_channel(uid, cause or 16, qos=False)
            originate_response("Failure", reason, dial)
            return
        self._newstate(ch, 6)
        originate_response("Success", 4, name)
        if outcome.kind in ("machine", "human"):
            self._newexten(ch, "AMD", "")
            await asyncio.sleep(ring_s)
            if uid not in self.channels:
                return
            if outcome.kind == "machine":
                self.varset(ch, "AMDSTATUS", "MACHINE")
                self.varset(ch, "AMDCAUSE", "LONGGREETING-1500-1500")
            else:
                self.varset(ch, "AMDSTATUS", "HUMAN")
                self.varset(ch, "AMDCAUSE", "HUMAN-800-800")
        call_id = variables.get("AIGW_CALL_ID", uid)
        target = variables.get("AIGW_AUDIOSOCKET", "")
        await self._bridge(ch, call_id, target, outcome)

    async def _bridge(self, ch: SimChannel, call_id: str, target: str, outcome: Outcome) -> None:
        """``AudioSocket(call_id,target)``: a real leg to the gateway, or a timed talk."""
        self._newexten(ch, "AudioSocket", f"{call_id},{target}")
        talk_s = self.talk_s if outcome.talk_s is None else outcome.talk_s
        if self.connect_audiosocket and target:
            from .audio import speech_like
            from .pbx import CallPlan, run_simulation

            host, _, port = target.rpartition(":")
            seconds = self.audiosocket_seconds or talk_s
            audio = speech_like(seconds + 1.0, seed=1) if outcome.caller_audio else None
            plan = CallPlan(seconds=seconds, audio=audio, call_id=call_id)
            sim = asyncio.ensure_future(run_simulation(host.strip("[]"), int(port),
                                                        plans=[plan]))
            ended = asyncio.ensure_future(ch.ended.wait())
            await asyncio.wait({sim, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not sim.done():
                sim.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sim
            ended.cancel()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.ended.wait(), talk_s)
        self.end_channel(ch.uniqueid, 16)

    def new_inbound(self, did: str, caller: str) -> SimChannel:
        """The start of an inbound PJSIP call: Newchannel (Ring), Newexten AGI (the AGI
        script then asks ``POST /v1/route`` with this channel's Uniqueid)."""
        uid = f"{int(time.time())}.{next(self._uid)}"
        ch = self._new_channel(uid, f"PJSIP/trunk-{next(self._seq):08x}", "aigw-inbound",
                               did, caller=caller, state=4)
        self._newexten(ch, "AGI", "aigw_route.py")
        return ch

    def enter_audiosocket(self, ch: SimChannel, call_id: str, target: str, *,
                          set_call_id_var: bool = True) -> None:
        """The routed call goes on: VarSet AIGW_CALL_ID, Newstate Up, Newexten
        ``AudioSocket(call_id,target)``."""
        if set_call_id_var:
            self.varset(ch, "AIGW_CALL_ID", call_id)
        self._newstate(ch, 6)
        self._newexten(ch, "AudioSocket", f"{call_id},{target}")

    async def inbound_call(
        self,
        call_id: str | None = None,
        *,
        did: str = "+15551230000",
        caller: str = "+15557654321",
        target: str = "127.0.0.1:9092",
        talk_s: float | None = None,
        talking: Sequence[int] = (1978,),
        cause: int = 0,
        set_call_id_var: bool = True,
    ) -> str:
        """Play one inbound PJSIP call routed to ``AudioSocket(call_id,target)``.

        Returns the channel's Uniqueid (Asterisk style ``<epoch>.<n>``). The sequence:
        Newchannel (Ring), Newexten AGI, VarSet AIGW_CALL_ID, Newstate Up, Newexten
        AudioSocket, a ChannelTalkingStart/Stop pair per ``talking`` entry, RTCPSent
        and RTCPReceived, the RTPAUDIOQOS VarSets, ``Hangup`` with ``cause`` (0: the
        caller's BYE).
        """
        call_id = call_id or str(uuid.uuid4())
        ch = self.new_inbound(did, caller)
        uid = ch.uniqueid
        self.enter_audiosocket(ch, call_id, target, set_call_id_var=set_call_id_var)
        talk = self.talk_s if talk_s is None else talk_s
        for dur in talking:
            self.talk(uid)
            self.talk(uid, dur)
        self.rtcp(uid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ch.ended.wait(), talk)
        self.end_channel(uid, cause)
        return uid


class _Reply(Protocol):
    def __call__(self, response: str, message: str, *extra: tuple[str, str]) -> None: ...


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
