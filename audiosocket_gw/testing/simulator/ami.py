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
  ms) as ``[aigw-outbound]`` does: only when ``AIGW_AMD=1`` (or not set at all), with
  ``AppData`` ``2500,1500,800,<AIGW_AMD_MS or 5000>``; a machine with
  ``AIGW_VOICEMAIL_ACTION=hangup`` is hung up (cause 16) without a bridge. Without
  ``Async`` it answers ``Error`` "Originate failed" for a failing outcome, like
  Asterisk.
* Answered calls run ``[aigw-outbound]``: Newexten ``AudioSocket`` with ``AppData``
  ``<AIGW_CALL_ID>,<AIGW_AUDIOSOCKET>`` and, when ``connect_audiosocket`` is on and
  the AudioSocket address variable is set, a real AudioSocket call to the gateway
  (``simulator.pbx.run_simulation`` with ``call_id`` = the ChannelId). The channel
  hangs up (``RTPAUDIOQOS*`` VarSets, then ``Hangup`` cause 16) when the AudioSocket
  leg ends, or after ``talk_s`` without one.
* Call control (docs/PROTOCOLS.md §4): ``Setvar`` (``No such channel``; without
  ``Channel`` a global; a function write such as ``LOCAL(x)`` or ``CALLERID(num)``
  emits no VarSet, and ``LOCAL()`` outside a Gosub is refused with Asterisk's log
  line in ``errors`` while the reply stays ``Success``), ``Getvar``, ``PlayDTMF``
  (reply after ``Duration``, only the first digit, no DTMF events; ``Receive: true``:
  DTMFEnd at once and a 0x03 frame to the gateway later), ``Redirect`` and ``Bridge``
  (the AudioSocket leg ends with a plain EOF).
* Attended transfer (docs/PROTOCOLS.md §4.7): a Redirect to ``[aigw-hold]`` runs
  ``MusicOnHold(default,${AIGW_HOLD_TIMEOUT})`` (``MusicOnHoldStart``; ``Stop`` when
  redirected or bridged out), then resumes the caller (``[aigw-resume]``, a new
  AudioSocket leg with ``AIGW_RESUME_ID``) or hangs up when that is empty. An
  Originate into ``[aigw-consult]`` opens ``AudioSocket(${AIGW_CONSULT_ID},...)``
  where the scripted person (``Outcome.press``) presses a digit once they hear the
  prompt. ``Bridge`` puts both in a bridge (``BridgeCreate``, ``MusicOnHoldStop``,
  ``BridgeEnter`` x2) that ends when the person hangs up after ``talk_s``
  (``BridgeLeave`` x2, ``BridgeDestroy``); each survivor goes on after its
  priority and hangs up (cause 16).
* After ``AudioSocket()`` returns because the gateway ended the leg, the include's
  logic: with ``AIGW_NEXT=dial`` the ``[aigw-dial]`` continuation (``Dial()`` with
  the ``AIGW_DIAL_*`` variables, each target scripted by ``outcomes`` like
  Originate's, the Dial events of §4.3, ``AIGW_DIAL_ANSWERED``/``AIGW_DIAL_STATUS``,
  then a new AudioSocket leg with ``AIGW_RESUME_ID`` or a hangup with cause 16);
  otherwise a hangup. ``legs``/``dials``/``dtmf_played`` record what happened.
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
from .pbx import CallPlan, CallReport, run_simulation

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
    press: str = ""
    """A person originated into ``[aigw-consult]`` (attended transfer): the digit they
    press ``press_after_s`` after the gateway's prompt starts ("": never). Once
    bridged they talk ``talk_s``, then hang up."""
    press_after_s: float = 0.2


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
    gosub_depth: int = 0
    """Gosub frames on the stack: ``LOCAL()`` works only inside one."""
    gosub_seen: bool = False
    """A Gosub ran once (Asterisk keeps the stack datastore afterwards)."""
    leg: CallPlan | None = None
    """The AudioSocket leg this channel is running, if any."""
    talk_s: float | None = None
    """How long this party talks once bridged (``Outcome.talk_s``)."""
    redirect: tuple[str, str, str] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by Redirect and Bridge: a channel parked in MusicOnHold moves on."""
    bridge: asyncio.Event | None = None
    """Set while in an AMI Bridge; the event fires when the bridge ends."""


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
        dtmf_scale: float = 1.0,
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
        self.bridge_attempts: list[tuple[str, str]] = []
        """(call id, address) of every AudioSocket connect the bridge tried, in order."""
        self.audiosocket_seconds = audiosocket_seconds
        self.dtmf_scale = dtmf_scale
        self.sessions: set[_Session] = set()
        self.channels: dict[str, SimChannel] = {}
        self.actions: list[AmiMessage] = []
        """Every action received, in order (tests assert on what the client sent)."""
        self.ended: list[tuple[str, int]] = []
        """(uniqueid, cause) of every channel hung up."""
        self.errors: list[str] = []
        """What Asterisk would write as ERROR to its log (e.g. LOCAL() outside Gosub)."""
        self.legs: list[CallReport] = []
        """Every AudioSocket connection the simulated dialplan made, in order."""
        self.dtmf_played: list[tuple[str, str, int]] = []
        """(channel name, digit, duration ms) of every PlayDTMF that reached a channel."""
        self.dials: list[tuple[str, str, str, str]] = []
        """(channel name, targets, timeout, options) of every Dial() the dialplan ran."""
        self.globals: dict[str, str] = {}
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
            var = msg.get("Variable") or ""
            if not var:
                reply("Error", "No variable specified")
                return
            chan = msg.get("Channel")
            found = self._find(chan) if chan else None
            if chan and found is None:
                reply("Error", "No such channel")
                return
            if found is None:
                value = self.globals.get(var, "")
            elif var.upper().startswith("LOCAL("):
                value = ""  # frames are not modelled beyond set/refuse
            else:
                value = found.variables.get(var, "")
            s.write([("Response", "Success"), *base, ("Variable", var), ("Value", value)])
        elif action == "setvar":
            var = msg.get("Variable") or ""
            if not var:
                reply("Error", "No variable specified")
                return
            chan = msg.get("Channel")
            if not chan:  # Asterisk sets a global and still says Success (§2c.1)
                self.globals[var] = msg.get("Value") or ""
                reply("Success", "Variable Set")
                return
            target = self._find(chan)
            if target is None:
                reply("Error", "No such channel")
                return
            self._setvar(target, var, msg.get("Value") or "")
            reply("Success", "Variable Set")
        elif action == "playdtmf":
            self._play_dtmf(s, msg, reply)
        elif action == "redirect":
            name = msg.get("Channel") or ""
            target = self._find(name)
            if target is None:
                reply("Error", f"Channel does not exist: {name}")
                return
            reply("Success", "Redirect successful")
            self._redirect(target, msg.get("Context") or "", msg.get("Exten") or "s",
                           msg.get("Priority") or "1")
        elif action == "bridge":
            a, b = msg.get("Channel1") or "", msg.get("Channel2") or ""
            ch1, ch2 = self._find(a), self._find(b)
            if ch1 is None:
                reply("Error", f"Channel1 does not exist: {a}")
                return
            if ch2 is None:
                reply("Error", f"Channel2 does not exist: {b}")
                return
            reply("Success", "Channels have been bridged")
            self._bridge_channels(ch1, ch2)
        elif action == "command":
            cmd = msg.get("Command") or ""
            out = [f"{len(self.channels)} active channels"] if "channels" in cmd else [
                f"No such command '{cmd}'"]
            s.write([("Response", "Success"), *base, ("Message", "Command output follows"),
                     *(("Output", line) for line in out)])
        else:
            reply("Error", "Invalid/unknown command")

    def _setvar(self, ch: SimChannel, var: str, value: str) -> None:
        """``pbx_builtin_setvar_helper``: a function write (``NAME(...)``) emits no VarSet
        and its failure is only logged; ``LOCAL()`` outside a Gosub fails."""
        if var.endswith(")"):
            func = var.split("(", 1)[0].upper()
            if func == "LOCAL":
                if ch.gosub_depth == 0:
                    if not ch.gosub_seen:
                        self.errors.append(f"Tried to set {var}, but we aren't within a "
                                           "Gosub routine")
                    return
                return  # a local of the current frame: gone at Return()
            if var.upper() == "CALLERID(NUM)":
                ch.caller = value
            ch.variables[var] = value
            return
        self.varset(ch, var, value)

    def _play_dtmf(self, s: _Session, msg: AmiMessage, reply: _Reply) -> None:
        """``PlayDTMF`` (§2c.3): only the first character; the reply comes after
        ``Duration`` ms; no DTMFBegin/End for sent digits. ``Receive: true``: an
        immediate reply and ``DTMFEnd`` (Direction Received), then a 0x03 frame to the
        gateway ``Duration`` ms later."""
        ch = self._find(msg.get("Channel"))
        if ch is None:
            reply("Error", "Channel not found")
            return
        digit = (msg.get("Digit") or "")[:1]
        if not digit:
            reply("Error", "No digit specified")
            return
        duration = _int(msg.get("Duration"), 100)
        if (msg.get("Receive") or "").lower() in ("true", "yes", "1"):
            reply("Success", "DTMF successfully queued")
            self.emit("DTMFEnd", [*self._snapshot(ch), ("Digit", digit),
                                  ("DurationMs", str(duration)), ("Direction", "Received")])
            leg = ch.leg

            def deliver() -> None:
                if leg is not None:
                    leg.send_dtmf.append(digit)

            asyncio.get_running_loop().call_later(duration / 1000.0 * self.dtmf_scale, deliver)
            return
        if ch.state == 6:
            self.dtmf_played.append((ch.name, digit, duration))
        loop = asyncio.get_running_loop()
        loop.call_later(duration / 1000.0 * self.dtmf_scale, reply, "Success",
                        "DTMF successfully queued")

    def _redirect(self, ch: SimChannel, context: str, exten: str, priority: str) -> None:
        ch.redirect = (context, exten, priority)
        ch.context, ch.exten = context, exten
        ch.gosub_depth = 0  # a Redirect drops the Gosub stack's position
        if ch.leg is not None and ch.leg.leave is not None:
            ch.leg.leave.set()
        ch.wake.set()

    def _bridge_channels(self, a: SimChannel, b: SimChannel) -> None:
        bridge = [("BridgeUniqueid", str(uuid.uuid4())), ("BridgeType", "basic"),
                  ("BridgeTechnology", "simple_bridge"), ("BridgeCreator", "<unknown>"),
                  ("BridgeName", "<unknown>"), ("BridgeNumChannels", "0")]
        self.emit("BridgeCreate", bridge)
        done = asyncio.Event()
        for ch in (a, b):
            if ch.application == "MusicOnHold":
                self.emit("MusicOnHoldStop", self._snapshot(ch))
            if ch.leg is not None and ch.leg.leave is not None:
                ch.leg.leave.set()
            ch.redirect = ("", "", "")
            ch.bridge = done
            ch.application, ch.app_data = "", ""
            ch.wake.set()
        for ch in (a, b):
            self.emit("BridgeEnter", [*bridge, *self._snapshot(ch)])
        b.linkedid = a.linkedid or a.uniqueid
        self._spawn(self._run_bridge(a, b, bridge, done))

    async def _run_bridge(self, a: SimChannel, b: SimChannel,
                          bridge: list[tuple[str, str]], done: asyncio.Event) -> None:
        """Until one side hangs up (the second party after its ``talk_s``)."""
        talk = self.talk_s if b.talk_s is None else b.talk_s
        waits = [asyncio.ensure_future(a.ended.wait()), asyncio.ensure_future(b.ended.wait())]
        await asyncio.wait(waits, timeout=talk, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        for ch in (a, b):
            self.emit("BridgeLeave", [*bridge, *self._snapshot(ch)])
        if not a.ended.is_set():
            self.end_channel(b.uniqueid, 16)  # the person hangs up
        self.emit("BridgeDestroy", bridge)
        for ch in (a, b):
            ch.bridge = None
        done.set()

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
        if variables.get("AIGW_AMD") == "1" or (
                "AIGW_AMD" not in variables and outcome.kind in ("machine", "human")):
            # [aigw-outbound]: AMD(2500,1500,800,<AIGW_AMD_MS, else 5000>). The budget
            # lives in a plain channel variable: Set(LOCAL(x)=...) outside a Gosub is
            # an ERROR in Asterisk and sets nothing (then AMD ran with its 5000 ms).
            total = variables.get("AIGW_AMD_MS") or "5000"
            self._newexten(ch, "AMD", f"2500,1500,800,{total}")
            await asyncio.sleep(ring_s)
            if uid not in self.channels:
                return
            if outcome.kind == "machine":
                self.varset(ch, "AMDSTATUS", "MACHINE")
                self.varset(ch, "AMDCAUSE", "LONGGREETING-1500-1500")
                if variables.get("AIGW_VOICEMAIL_ACTION") == "hangup":
                    self._newexten(ch, "Hangup", "16")
                    self.end_channel(uid, 16)
                    return
            else:
                self.varset(ch, "AMDSTATUS", "HUMAN")
                self.varset(ch, "AMDCAUSE", "HUMAN-800-800")
        if context == "aigw-consult":
            await self._consult(ch, outcome)
            return
        call_id = variables.get("AIGW_CALL_ID", uid)
        target = variables.get("AIGW_AUDIOSOCKET", "")
        await self._bridge(ch, call_id, target, outcome)

    async def _consult(self, ch: SimChannel, outcome: Outcome) -> None:
        """``[aigw-consult]``: the person's AudioSocket leg, then Hangup(16) (also when
        a bridge took them out of it and ended)."""
        ch.talk_s = outcome.talk_s
        self._newexten(ch, "Answer", "")
        press = (outcome.press_after_s, outcome.press) if outcome.press else None
        how = await self._audiosocket(ch, ch.variables.get("AIGW_CONSULT_ID", ""),
                                      ch.variables.get("AIGW_AUDIOSOCKET", ""), outcome,
                                      app="TryExec", press=press, seconds=60.0)
        if how == "moved" and ch.bridge is not None:
            await ch.bridge.wait()
        if ch.uniqueid in self.channels:
            self._newexten(ch, "Hangup", "16")
            self.end_channel(ch.uniqueid, 16)

    async def _hold(self, ch: SimChannel) -> str:
        """``[aigw-hold]``: MusicOnHold until redirected, bridged or timed out."""
        ch.context, ch.exten = "aigw-hold", "s"
        limit = _float(ch.variables.get("AIGW_HOLD_TIMEOUT"))
        ch.wake.clear()
        self._newexten(ch, "MusicOnHold", f"default,{ch.variables.get('AIGW_HOLD_TIMEOUT', '')}")
        self.emit("MusicOnHoldStart", [*self._snapshot(ch), ("Class", "default")])
        ended = asyncio.ensure_future(ch.ended.wait())
        woke = asyncio.ensure_future(ch.wake.wait())
        await asyncio.wait({ended, woke}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        woke.cancel()
        if ch.uniqueid not in self.channels:
            return "ended"
        if ch.bridge is not None:  # MusicOnHoldStop came with the bridge
            await ch.bridge.wait()
        elif ch.redirect is not None:
            self.emit("MusicOnHoldStop", self._snapshot(ch))
            return "moved"
        else:  # the hold timed out
            self.emit("MusicOnHoldStop", self._snapshot(ch))
        if ch.uniqueid not in self.channels:
            return "ended"
        if not ch.variables.get("AIGW_RESUME_ID"):
            self._newexten(ch, "Hangup", "16")
            self.end_channel(ch.uniqueid, 16)
            return "ended"
        ch.redirect = ("aigw-resume", "s", "1")  # Goto(aigw-resume,s,1)
        return "moved"

    async def _resume(self, ch: SimChannel, outcome: Outcome) -> str:
        """``[aigw-resume]``: back to the gateway on the pre-registered leg."""
        ch.context, ch.exten = "aigw-resume", "s"
        self._newexten(ch, "Answer", "")
        return await self._audiosocket(ch, ch.variables.get("AIGW_RESUME_ID", ""),
                                       ch.variables.get("AIGW_AUDIOSOCKET", ""), outcome,
                                       app="TryExec")

    async def _bridge(self, ch: SimChannel, call_id: str, target: str, outcome: Outcome) -> None:
        """``Gosub(aigw-bridge)``: ``AudioSocket(call_id,target)`` (a real leg to the
        gateway, or a timed talk), then what the include does once it returns: the
        ``[aigw-dial]`` continuation while ``AIGW_NEXT`` = dial, else ``Hangup()``."""
        how = await self._connect(ch, call_id, target, outcome, app="AudioSocket")
        await self._after_audiosocket(ch, how, outcome)

    async def _connect(self, ch: SimChannel, call_id: str, target: str, outcome: Outcome,
                       *, app: str) -> str:
        """The Gosub's connect loop (``[aigw-bridge]``, also entered at ``resume``):
        TryExec over AIGW_AUDIOSOCKET, then each AIGW_AUDIOSOCKET_ALT address while the
        connection is refused (TRYSTATUS=FAILED at once, docs/PROTOCOLS.md §1.3)."""
        ch.gosub_depth += 1
        ch.gosub_seen = True
        alternates = [a for a in ch.variables.get("AIGW_AUDIOSOCKET_ALT", "").split("&") if a]
        targets = [target, *alternates] if target else [target]
        how = "ended"
        for i, addr in enumerate(targets):
            self.bridge_attempts.append((call_id, addr))
            how = await self._audiosocket(ch, call_id, addr, outcome, app=app,
                                          refused_tries_next=i + 1 < len(targets))
            if how != "refused":
                break
        ch.gosub_depth = max(0, ch.gosub_depth - 1)
        return how

    async def _after_audiosocket(self, ch: SimChannel, how: str, outcome: Outcome) -> None:
        while ch.uniqueid in self.channels:
            if how == "moved":
                context = ch.redirect[0] if ch.redirect else ""
                ch.redirect = None
                if context == "aigw-dial":
                    how = await self._dial(ch, outcome)
                    continue
                if context == "aigw-hold":
                    how = await self._hold(ch)
                    continue
                if context == "aigw-resume":
                    how = await self._resume(ch, outcome)
                    continue
                if ch.bridge is not None:
                    # Bridged straight out of AudioSocket: when the bridge ends the
                    # channel goes on after AudioSocket (§4.7), where the include
                    # hangs up.
                    await ch.bridge.wait()
                    how = "gateway"
                    continue
                # Parked elsewhere (MusicOnHold, a bridge): up until someone ends it.
                await ch.ended.wait()
                return
            if how == "gateway" and ch.variables.get("AIGW_NEXT") == "dial":
                how = await self._dial(ch, outcome)
                continue
            if how in ("gateway", "talked"):
                self.end_channel(ch.uniqueid, 16)
            return

    async def _audiosocket(self, ch: SimChannel, call_id: str, target: str, outcome: Outcome,
                           *, app: str, refused_tries_next: bool = False,
                           press: tuple[float, str] | None = None,
                           seconds: float | None = None) -> str:
        """One AudioSocket leg; how it ended: ``gateway`` (00 frame or close: the
        dialplan continues), ``caller`` (the caller hung up: the channel ends),
        ``moved`` (Redirect/Bridge), ``talked`` (no real leg) or ``ended``."""
        data = f"{call_id},{target}"
        if app == "TryExec":
            self._newexten(ch, "TryExec", f"AudioSocket({data})")
        else:
            self._newexten(ch, "AudioSocket", data)
        talk_s = self.talk_s if outcome.talk_s is None else outcome.talk_s
        if not (self.connect_audiosocket and target):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.ended.wait(), talk_s)
            return "ended" if ch.ended.is_set() else "talked"
        from .audio import speech_like

        host, _, port = target.rpartition(":")
        seconds = seconds or self.audiosocket_seconds or talk_s
        audio = speech_like(seconds + 1.0, seed=1) if outcome.caller_audio else None
        leave = asyncio.Event()
        plan = CallPlan(seconds=seconds, audio=audio, call_id=call_id, leave=leave,
                        press_after_audio=press)
        ch.leg = plan
        sim = asyncio.ensure_future(run_simulation(host.strip("[]"), int(port), plans=[plan]))
        ended = asyncio.ensure_future(ch.ended.wait())
        try:
            await asyncio.wait({sim, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not sim.done():
                leave.set()  # the channel is gone: the socket closes
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(sim, 1.0)
        finally:
            ended.cancel()
            if not sim.done():  # this channel's task was cancelled: so is its leg
                sim.cancel()
            ch.leg = None
        if not sim.done() or sim.cancelled() or sim.exception() is not None:
            return "ended"
        report = sim.result().calls[0]
        self.legs.append(report)
        if ch.ended.is_set():
            return "ended"
        if ch.redirect is not None or ch.bridge is not None:
            # A Redirect/Bridge was applied: the channel moves, whatever the gateway
            # did to the socket after the action (its async goto wins, §4.5).
            report.ended_by = "moved"
            return "moved"
        if report.ended_by in ("gateway-hangup", "gateway-close"):
            return "gateway"
        if report.ended_by == "moved":
            return "moved"
        if report.ended_by == "error" and refused_tries_next and \
                (report.error or "").startswith("connect failed"):
            return "refused"  # the bridge moves on to the next gateway address
        if report.ended_by == "error":
            self.end_channel(ch.uniqueid, 0)  # Asterisk kills the call (§1)
            return "ended"
        self.end_channel(ch.uniqueid, 16)
        return "caller"

    async def _dial(self, ch: SimChannel, outcome: Outcome) -> str:
        """``[aigw-dial]``: Dial the targets, keep the outcome, then resume or hang up.

        Each target behaves as ``outcomes[number]`` (the same scripts as Originate):
        answered (rings ``ring_s``, talks ``talk_s``, then the callee hangs up), busy,
        no-answer (``ring_s`` or the Dial timeout, whichever is shorter), congestion,
        failed (no channel at all: CHANUNAVAIL without DialBegin/DialEnd). The events
        follow docs/PROTOCOLS.md §2c.1.
        """
        ch.context, ch.exten = "aigw-dial", "s"
        self.varset(ch, "AIGW_NEXT", "")
        cid = ch.variables.get("AIGW_DIAL_CALLERID", "")
        if cid:
            ch.caller = cid  # Set(CALLERID(num)=...): no VarSet
        targets = ch.variables.get("AIGW_DIAL_TARGETS", "")
        timeout = ch.variables.get("AIGW_DIAL_TIMEOUT", "")
        options = ch.variables.get("AIGW_DIAL_OPTIONS", "")
        self.dials.append((ch.name, targets, timeout, options))
        self._newexten(ch, "Dial", f"{targets},{timeout},{options}")
        if not targets:
            self.errors.append("Dial requires an argument (dialstring)")
            self.end_channel(ch.uniqueid, 16)
            return "ended"
        status, answered = await self._ring(ch, targets, _float(timeout), options)
        if ch.uniqueid not in self.channels:
            return "ended"
        self._newexten(ch, "Set", f"AIGW_DIAL_ANSWERED={answered}")
        self.varset(ch, "AIGW_DIAL_ANSWERED", answered)
        self.varset(ch, "AIGW_DIAL_STATUS", status)
        resume = ch.variables.get("AIGW_RESUME_ID", "")
        if not resume:
            self._newexten(ch, "Hangup", "16")
            self.end_channel(ch.uniqueid, 16)
            return "ended"
        self._newexten(ch, "Answer", "")
        # Gosub(aigw-bridge,resume,1): the same failover as the first leg.
        return await self._connect(ch, resume, ch.variables.get("AIGW_AUDIOSOCKET", ""),
                                   outcome, app="TryExec")

    async def _ring(self, ch: SimChannel, targets: str, dial_timeout: float | None,
                    options: str) -> tuple[str, str]:
        """Dial(): (DIALSTATUS, ANSWEREDTIME); the caller may be gone on return."""
        self.varset(ch, "DIALSTATUS", "")
        for var in ("ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS"):
            self.varset(ch, var, "")
        legs: list[tuple[float, SimChannel, Outcome]] = []
        for dial_string in (t for t in targets.split("&") if t):
            number = _dial_number(dial_string)
            oc = self.outcomes.get(number, self.default_outcome)
            if oc.kind == "failed":
                continue
            trunk = dial_string.split("@", 1)[1] if "@" in dial_string else "trunk"
            dest = self._new_channel(f"{int(time.time())}.{next(self._uid)}",
                                     f"PJSIP/{trunk}-{next(self._seq):08x}", "aigw-dial",
                                     number, caller=ch.caller)
            dest.linkedid = ch.linkedid or ch.uniqueid
            self.emit("DialBegin", [*self._snapshot(ch), *_dest(self._snapshot(dest)),
                                    ("DialString", dial_string.split("/", 1)[-1])])
            self._newstate(dest, 5)
            self.emit("DialState", [*self._snapshot(ch), *_dest(self._snapshot(dest)),
                                    ("DialStatus", "RINGING")])
            ring = self.ring_s if oc.ring_s is None else oc.ring_s
            legs.append((ring, dest, oc))
        if not legs:
            self.varset(ch, "DIALSTATUS", "CHANUNAVAIL")
            return "CHANUNAVAIL", ""
        legs.sort(key=lambda leg: leg[0])
        started = time.monotonic()
        failures: list[str] = []
        winner: tuple[SimChannel, Outcome] | None = None
        for ring, dest, oc in legs:
            due = ring if dial_timeout is None else min(ring, dial_timeout)
            wait = max(0.0, started + due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ch.ended.wait(), wait)
            if ch.ended.is_set():
                break
            if (dial_timeout is not None and ring > dial_timeout) or oc.kind == "no-answer":
                failures.append("NOANSWER")
                self._dial_end(ch, dest, "NOANSWER", 0)
            elif oc.kind in ("busy", "congestion"):
                status = "BUSY" if oc.kind == "busy" else "CONGESTION"
                failures.append(status)
                self._dial_end(ch, dest, status, 17 if oc.kind == "busy" else 34)
            else:
                winner = (dest, oc)
                break
        for _, dest, _ in legs:  # everyone still ringing is cancelled
            if dest.uniqueid in self.channels and (winner is None or dest is not winner[0]):
                self._dial_end(ch, dest, "CANCEL", 0 if winner is None else 26)
        if ch.ended.is_set():
            return "CANCEL", ""
        if winner is None:
            status = next((s for s in ("NOANSWER", "BUSY", "CONGESTION") if s in failures),
                          "CHANUNAVAIL")
            self.varset(ch, "DIALSTATUS", status)
            return status, ""
        dest, oc = winner
        self._newstate(dest, 6)
        self.varset(ch, "DIALSTATUS", "ANSWER")
        self.varset(ch, "DIALEDPEERNAME", dest.name)
        self.emit("DialEnd", [*self._snapshot(ch), *_dest(self._snapshot(dest)),
                              ("DialStatus", "ANSWER")])
        bridge = [("BridgeUniqueid", str(uuid.uuid4())), ("BridgeType", "basic"),
                  ("BridgeTechnology", "simple_bridge")]
        self.emit("BridgeCreate", bridge)
        self.emit("BridgeEnter", [*bridge, *self._snapshot(dest)])
        self.emit("BridgeEnter", [*bridge, *self._snapshot(ch)])
        answered_at = time.monotonic()
        talk = self.talk_s if oc.talk_s is None else oc.talk_s
        limit = _time_limit_s(options)
        if limit is not None:
            talk = min(talk, limit)
        done = asyncio.ensure_future(ch.ended.wait())
        gone = asyncio.ensure_future(dest.ended.wait())
        await asyncio.wait({done, gone}, timeout=talk, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        gone.cancel()
        talked = time.monotonic() - answered_at
        self.emit("BridgeLeave", [*bridge, *self._snapshot(dest)])
        self.emit("BridgeLeave", [*bridge, *self._snapshot(ch)])
        self.end_channel(dest.uniqueid, 16)
        self.emit("BridgeDestroy", bridge)
        if ch.uniqueid not in self.channels:
            return "ANSWER", str(int(talked))
        self.varset(ch, "ANSWEREDTIME", str(int(talked)))
        self.varset(ch, "ANSWEREDTIME_MS", str(int(talked * 1000)))
        if "g" not in _dial_flags(options):  # without g the caller is hung up (§2c.1)
            self.end_channel(ch.uniqueid, 16)
        return "ANSWER", str(int(talked))

    def _dial_end(self, ch: SimChannel, dest: SimChannel, status: str, cause: int) -> None:
        self.emit("DialEnd", [*self._snapshot(ch), *_dest(self._snapshot(dest)),
                              ("DialStatus", status)])
        self.end_channel(dest.uniqueid, cause, qos=False)

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


def _dest(snapshot: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"Dest{k}", v) for k, v in snapshot]


def _dial_number(dial_string: str) -> str:
    """The scripted number of a dial string: ``PJSIP/+1555@trunk`` -> ``+1555``,
    ``PJSIP/trunk/sip:alice@example.com`` -> ``sip:alice@example.com``."""
    last = dial_string.rsplit("/", 1)[-1]
    if last.startswith("sip:"):
        return last
    return dial_string.split("/", 1)[-1].split("@", 1)[0]


def _dial_flags(options: str) -> str:
    """Dial option letters without their (arguments)."""
    out, depth = [], 0
    for c in options:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            out.append(c)
    return "".join(out)


def _time_limit_s(options: str) -> float | None:
    """The first number of a Dial ``L(x[:y][:z])`` option, in seconds."""
    depth = 0
    for i, c in enumerate(options):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "L" and depth == 0 and options[i + 1 : i + 2] == "(":
            arg = options[i + 2 : options.find(")", i)].split(":", 1)[0]
            try:
                return int(arg) / 1000.0
            except ValueError:
                return None
    return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
