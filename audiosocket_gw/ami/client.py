"""The AMI client: a small typed adapter over panoramisk (docs/PROTOCOLS.md §2).

panoramisk keeps its good parts here (ActionID futures, message grouping of list
actions); we own what it gets wrong (docs/PROTOCOLS.md §2.10):

* **Connection lifecycle.** One ``panoramisk.Manager`` per connection attempt. Its
  own reconnect loop (fixed delay, forever) and its unchecked Ping are disabled; we
  reconnect with exponential backoff and check liveness ourselves: a ``Ping`` every
  ``ping_interval`` s must answer within ``ping_timeout`` s or the connection is
  closed and re-established.
* **Login.** Right after ``connect()`` login is still in flight: we await
  ``authenticated_future`` (bounded) before any action, and treat a refused login
  like a failed connection (backoff, log once per state change, never the secret).
* **Async Originate.** Its ``OriginateResponse`` resolves the action's future and is
  never dispatched to event callbacks. ``originate()`` returns as soon as the
  immediate reply arrives, then waits for the final response in a task it owns and
  puts the ``OriginateResponse`` into the event stream itself, so the tracker sees
  it like any other event. ``originate_channel_id(action_id)`` maps it back.
* **Events** arrive as ``audiosocket_gw.ami.protocol.AmiMessage`` through one bounded
  queue (``events()``, an async iterator). When the consumer falls behind, optional
  events (RTCP, talking, unrelated VarSets: ``is_optional_event``) are shed and
  counted (``dropped``); events that carry a call's state (starts, ends, answer,
  AudioSocket ties) are never dropped: they wait in order past the bound.
* ``on_connected`` callbacks (coroutines) run after every successful login: the
  tracker resyncs there (``CoreShowChannels``).

No AMI configured (``AmiSettings.from_env`` returns None) means no client: the
gateway serves AudioSocket calls without it, and keeps doing so while AMI is down.

Errors: ``AmiUnavailable`` (not connected / the connection dropped while waiting),
``AmiTimeout`` (no reply in time), ``AmiActionError`` (``Response: Error``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from panoramisk import actions as pk_actions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.manager import Manager

from ..dial import DTMF_PAUSE_S
from ..settings import AmiSettings
from .protocol import AmiMessage, audiosocket_call_id

log = logging.getLogger("audiosocket_gw.ami")

__all__ = [
    "AmiActionError",
    "AmiClient",
    "AmiClientError",
    "AmiSettings",
    "AmiTimeout",
    "AmiUnavailable",
    "is_optional_event",
    "DTMF_PAUSE_S",
    "check_dialplan_value",
]

_VAR_NAME_RE = re.compile(r"_{0,2}[A-Za-z][A-Za-z0-9_]{0,79}(\([A-Za-z0-9_,]{0,80}\))?")
"""A channel variable (``AIGW_NEXT``, ``__INHERITED``) or a function (``CALLERID(num)``)."""
_DIALPLAN_VALUE_RE = re.compile(r"[A-Za-z0-9@_.+:/&()*#=%~-]{0,1000}")
"""What a value that reaches an application argument may contain: no comma (argument
separator), quote, backslash, ``$``/``{``/``^`` (expansion), ``;``, ``|`` or whitespace."""
_CONTEXT_RE = re.compile(r"[A-Za-z0-9_-]{1,79}")
_EXTEN_RE = re.compile(r"[A-Za-z0-9_+*#.-]{1,80}")
_DTMF_RE = re.compile(r"[0-9*#A-Da-dwW]*")


def check_dialplan_value(value: str) -> str:
    """``value`` if it is safe to expand into an application argument, else ValueError.

    A variable set over AMI is expanded by ``${...}`` into application arguments,
    where a comma starts a new argument and quotes, backslashes and brackets change
    the parsing (docs/PROTOCOLS.md §2b, AGI): only a conservative character set
    passes, with balanced parentheses (Dial options such as ``L(60000)``).
    """
    if not isinstance(value, str) or not _DIALPLAN_VALUE_RE.fullmatch(value):
        raise ValueError(f"unsafe dialplan value {value!r}")
    depth = 0
    for ch in value:
        depth += 1 if ch == "(" else -1 if ch == ")" else 0
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in dialplan value {value!r}")
    return value


def _check_channel(channel: str) -> str:
    # An empty Channel makes Setvar set a *global* (docs/PROTOCOLS.md §2c.1): never.
    if not isinstance(channel, str) or not channel.strip() or any(
            c in channel for c in "\r\n\x00, "):
        raise ValueError(f"invalid channel {channel!r}")
    return channel


class AmiClientError(Exception):
    """Root of the client's errors."""


class AmiUnavailable(AmiClientError):
    """Not connected to AMI (or the connection dropped while waiting for a reply)."""


class AmiTimeout(AmiClientError):
    """No reply within the timeout."""


class AmiActionError(AmiClientError):
    """Asterisk answered ``Response: Error``; ``message`` is its ``Message``."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"{action}: {message}")
        self.message = message


class _Action(pk_actions.Action):  # type: ignore[misc]
    """A panoramisk action that also resolves ``first`` with its first reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def add_message(self, message: Any) -> Any:
        if not self.first.done():
            self.first.set_result(message)
        return super().add_message(message)


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager without its own reconnect loop: we are told instead."""

    def __init__(self, on_lost: Callable[[], None], **config: Any) -> None:
        super().__init__(**config)
        self._on_lost = on_lost

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            self._on_lost()
            return
        super().connection_made(f)

    def connection_lost(self, exc: Any) -> None:
        self._connected = False
        self.close()
        self._on_lost()


class _BoundedProtocol(AMIProtocol):  # type: ignore[misc]
    """panoramisk's protocol with a bound on what the peer can make us buffer.

    panoramisk keeps everything up to the next blank line: a 10 MB line or an event
    that never ends grows memory without limit. Here a line over ``max_line`` bytes,
    a message over ``max_message`` bytes (or a buffer over it: panoramisk only splits
    on CRLF CRLF) aborts the connection; ``on_violation(reason)`` is told once, and
    the client reconnects as after any lost connection.
    """

    def __init__(self, max_line: int, max_message: int,
                 on_violation: Callable[[str], None]) -> None:
        super().__init__()
        self._max_line = max_line
        self._max_message = max_message
        self._on_violation = on_violation
        self._line = 0  # bytes of the current (unfinished) line
        self._message = 0  # bytes of the current (unfinished) message
        self._blank = True  # the current line is empty so far (or just a CR)
        self._violated = False

    def data_received(self, data: bytes) -> None:
        if self._violated:
            return
        reason = self._check(data)
        if reason is None:
            super().data_received(data)
            pending = self.queue[0] if self.queue else ""
            if len(pending) > self._max_message:
                reason = f"more than {self._max_message} bytes without a message end"
        if reason is not None:
            self._violated = True
            self.queue.clear()
            self._on_violation(reason)
            self.transport.abort()

    def _check(self, data: bytes) -> str | None:
        for i, piece in enumerate(data.split(b"\n")):
            if i:  # a line ended: a blank one (LF or CRLF) ends the message
                self._message = 0 if self._blank else self._message + self._line + 1
                self._line, self._blank = 0, True
            if piece:
                self._line += len(piece)
                if self._blank and (self._line > 1 or piece != b"\r"):
                    self._blank = False
            if self._line > self._max_line + 1:  # + a CR
                return f"a line longer than {self._max_line} bytes"
            if self._message + self._line > self._max_message:
                return f"a message larger than {self._max_message} bytes"
        return None


# panoramisk logs whole actions and messages (an Originate's Channel, CallerID and
# variables: phone numbers) at INFO/DEBUG, e.g. "Adding action ... to awaiting list"
# when AMI drops while an Originate is pending. Its loggers are held at WARNING, and
# what still passes has every phone-number-like digit run redacted.
_PANORAMISK_LOGGERS: Final = ("audiosocket_gw.ami.panoramisk", "panoramisk",
                              "panoramisk.ami_protocol", "panoramisk.manager",
                              "panoramisk.actions", "panoramisk.message")
_NUMBER_RE: Final = re.compile(r"\+?\d[\d\s().-]{5,}\d")


class _RedactNumbers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        record.msg = _NUMBER_RE.sub("<redacted>", text)
        record.args = None
        return True


def quiet_panoramisk() -> None:
    """Hold panoramisk's loggers at WARNING and redact numbers from them (idempotent)."""
    for name in _PANORAMISK_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(max(lg.level, logging.WARNING))
        if not any(isinstance(f, _RedactNumbers) for f in lg.filters):
            lg.addFilter(_RedactNumbers())


# Events that carry a call's state (the tracker's inputs): never shed.
_STATE_EVENTS: Final = frozenset({
    "newchannel", "newstate", "hangup", "originateresponse", "fullybooted", "shutdown",
    "userevent",
})
_STATE_VARIABLES: Final = frozenset({"AIGW_CALL_ID", "AMDSTATUS", "AMDCAUSE"})


def is_optional_event(msg: AmiMessage) -> bool:
    """True for an event that may be shed under load (RTCP, talking, other VarSets...).

    Call starts and ends and anything that changes or ties a call's state are not
    optional: ``Newchannel``, ``Newstate``, ``Hangup``, ``OriginateResponse``, the
    ``Newexten`` that runs AudioSocket, the ``VarSet``s of ``AIGW_CALL_ID`` and AMD.
    """
    ev = (msg.event or "").lower()
    if ev in _STATE_EVENTS:
        return False
    if ev == "varset":
        return (msg.get("Variable") or "").upper() not in _STATE_VARIABLES
    if ev == "newexten":
        return audiosocket_call_id(msg.get("Application"), msg.get("AppData")) is None
    return True


def _to_message(msg: Any) -> AmiMessage:
    """A panoramisk ``Message`` as our ``AmiMessage`` (repeated keys expanded)."""
    headers: list[tuple[str, str]] = []
    for key, value in msg.items():
        if isinstance(value, list):
            headers.extend((str(key), str(v)) for v in value)
        else:
            headers.append((str(key), str(value)))
    return AmiMessage(tuple(headers))


class AmiClient:
    """Connects, stays connected, and hands out events and action replies."""

    def __init__(self, settings: AmiSettings, *,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.on_connected: list[Callable[[], Awaitable[None]]] = []
        """Coroutine functions run after every successful login (resync)."""
        self._on_reconnect = on_reconnect
        self._queue: asyncio.Queue[AmiMessage] = asyncio.Queue(settings.event_queue)
        self._overflow: collections.deque[AmiMessage] = collections.deque()
        """State-carrying events past the queue's bound, in order (never dropped)."""
        self._manager: _Manager | None = None
        self._lost = asyncio.Event()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._originates: dict[str, str] = {}
        self._stopping = False
        self.connects = 0
        """Successful logins so far (the first one included)."""
        self.dropped = 0
        """Optional events shed because the queue was full (``is_optional_event``)."""
        self.ping_failures = 0
        self.protocol_errors = 0
        """Connections dropped because the peer broke a size limit."""

    # -- lifecycle ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Start connecting in the background (returns at once)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` s for a login; True if logged in."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout)
        return self.connected

    async def stop(self) -> None:
        """Disconnect and cancel every task the client owns."""
        self._stopping = True
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._task = None
        self._close_manager()

    def force_reconnect(self) -> None:
        """Drop the connection now; the run loop reconnects with backoff."""
        self._close_manager()
        self._set_lost()

    def _close_manager(self) -> None:
        m = self._manager
        self._manager = None
        self._ready.clear()
        if m is not None:
            with contextlib.suppress(Exception):
                m.close()

    def _set_lost(self) -> None:
        self._ready.clear()
        self._lost.set()

    async def _run(self) -> None:
        delay = self.settings.backoff_initial
        was_up = True
        while not self._stopping:
            ok = await self._connect_once()
            if ok:
                was_up = True
                up_at = time.monotonic()
                await self._serve_connection()
                if self._stopping:
                    return
                # A login alone proves little (a peer may drop every connection a moment
                # later): the backoff starts over only after a healthy stretch.
                if time.monotonic() - up_at >= self.settings.backoff_reset_after:
                    delay = self.settings.backoff_initial
                log.warning("AMI connection to %s:%d lost", self.settings.host,
                            self.settings.port)
                if self._on_reconnect is not None:
                    self._on_reconnect()
            elif was_up:
                log.warning("AMI %s:%d unavailable; retrying with backoff",
                            self.settings.host, self.settings.port)
                was_up = False
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.backoff_max)

    async def _connect_once(self) -> bool:
        s = self.settings
        quiet_panoramisk()
        self._lost = asyncio.Event()
        lost = self._lost
        def on_lost() -> None:
            lost.set()
            self._ready.clear()

        manager = _Manager(
            on_lost,
            host=s.host, port=s.port, username=s.username, secret=s.secret,
            events="on", ping_delay=10**9, ping_interval=10**9,
            reconnect_timeout=10**9, loop=asyncio.get_running_loop(),
            log=logging.getLogger("audiosocket_gw.ami.panoramisk"),
            protocol_factory=lambda: _BoundedProtocol(s.max_line, s.max_message,
                                                      self._protocol_violation),
        )
        manager.register_event("*", self._on_event)
        self._manager = manager
        try:
            await asyncio.wait_for(manager.connect(), s.connect_timeout)
        except (OSError, TimeoutError):
            self._close_manager()
            return False
        auth = manager.authenticated_future
        if lost.is_set() or auth is None:
            self._close_manager()
            return False
        try:
            resp = await asyncio.wait_for(asyncio.shield(auth), s.login_timeout)
        except (TimeoutError, asyncio.CancelledError, Exception):
            if asyncio.current_task() is not None and self._stopping:
                raise
            self._close_manager()
            return False
        if not getattr(resp, "success", False):
            log.error("AMI login refused for user %s", s.username)
            self._close_manager()
            return False
        self.connects += 1
        self._ready.set()
        log.info("AMI connected to %s:%d (login %d)", s.host, s.port, self.connects)
        for cb in list(self.on_connected):
            self._spawn(cb())
        return True

    async def _serve_connection(self) -> None:
        """Ping until the connection is lost or stops answering."""
        s = self.settings
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), s.ping_interval)
            if self._lost.is_set():
                break
            try:
                await self.send_action("Ping", timeout=s.ping_timeout)
            except AmiClientError:
                self.ping_failures += 1
                log.warning("AMI Ping unanswered within %.1f s: reconnecting", s.ping_timeout)
                break
        self._close_manager()

    def _protocol_violation(self, reason: str) -> None:
        self.protocol_errors += 1
        log.error("AMI %s:%d sent %s: connection dropped", self.settings.host,
                  self.settings.port, reason)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("AMI task failed", exc_info=task.exception())

    # -- events -------------------------------------------------------------------

    def _on_event(self, manager: Any, message: Any) -> None:
        if manager is not self._manager:
            return
        self._put(_to_message(message))

    def _put(self, msg: AmiMessage) -> None:
        overflow = self._overflow
        if not overflow:
            try:
                self._queue.put_nowait(msg)
                return
            except asyncio.QueueFull:
                pass
        if is_optional_event(msg):
            self.dropped += 1  # shed: nothing about a call's state is lost
            return
        overflow.append(msg)  # call starts, ends, state: never dropped

    def _refill(self) -> None:
        overflow = self._overflow
        while overflow and not self._queue.full():
            self._queue.put_nowait(overflow.popleft())

    def inject(self, msg: AmiMessage) -> None:
        """Put ``msg`` in the event stream (used for the ``OriginateResponse``)."""
        self._put(msg)

    async def events(self) -> AsyncIterator[AmiMessage]:
        """Every event, in arrival order, forever (one consumer)."""
        while True:
            msg = await self._queue.get()
            self._refill()
            yield msg

    async def next_event(self, timeout: float) -> AmiMessage | None:  # noqa: ASYNC109
        """The next event, or None after ``timeout`` s."""
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        self._refill()
        return msg

    # -- actions ------------------------------------------------------------------

    def _send(self, name: str, fields: Mapping[str, str | Sequence[str]],
              as_list: bool | None) -> _Action:
        manager = self._manager
        if manager is None or not self.connected or manager.protocol is None:
            raise AmiUnavailable("not connected to AMI")
        act = _Action({"Action": name, **{k: (list(v) if not isinstance(v, str) else v)
                                            for k, v in fields.items()}}, as_list=as_list)
        manager.send_action(act, as_list=as_list)
        return act

    async def _wait(self, fut: asyncio.Future[Any], name: str,
                    timeout: float) -> Any:  # noqa: ASYNC109
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({fut, lost}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if fut in done:
            return fut.result()
        if lost in done:
            raise AmiUnavailable(f"AMI connection lost while waiting for {name}")
        raise AmiTimeout(f"no reply to {name} within {timeout:.1f} s")

    async def send_action(
        self,
        name: str,
        fields: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        as_list: bool | None = None,
    ) -> AmiMessage | list[AmiMessage]:
        """Send one action; its reply (a list for list actions such as CoreShowChannels).

        Raises ``AmiActionError`` on ``Response: Error``.
        """
        act = self._send(name, fields or {}, as_list)
        res = await self._wait(act.future, name, timeout or self.settings.action_timeout)
        if isinstance(res, list):
            out = [_to_message(m) for m in res]
            head = out[0] if out else None
        else:
            out = _to_message(res)  # type: ignore[assignment]
            head = out  # type: ignore[assignment]
        if head is not None and (head.response or "").lower() == "error":
            raise AmiActionError(name, head.get("Message", ""))
        return out

    async def core_show_channels(self) -> list[AmiMessage]:
        """The ``CoreShowChannel`` events of a ``CoreShowChannels`` list."""
        res = await self.send_action("CoreShowChannels", as_list=True)
        items = res if isinstance(res, list) else [res]
        return [m for m in items if (m.event or "").lower() == "coreshowchannel"]

    async def hangup(self, channel: str, cause: int = 16) -> None:
        """``Hangup`` a channel by name (``AmiActionError`` if it does not exist)."""
        await self.send_action("Hangup", {"Channel": channel, "Cause": str(cause)})

    async def originate(
        self,
        *,
        channel: str,
        channel_id: str,
        context: str,
        exten: str = "s",
        priority: str = "1",
        timeout_ms: int = 30_000,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> str:
        """Send an ``Async: true`` Originate; returns its ActionID once it is queued.

        The final ``OriginateResponse`` (answered or failed) is put in the event stream
        when it arrives. Raises ``AmiActionError`` if Asterisk refuses the action.
        """
        fields: dict[str, str | Sequence[str]] = {
            "Channel": channel, "Context": context, "Exten": exten, "Priority": priority,
            "Timeout": str(timeout_ms), "Async": "true", "ChannelId": channel_id,
        }
        if caller_id:
            fields["CallerID"] = caller_id
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        act = self._send("Originate", fields, None)
        aid = str(act.action_id)
        self._originates[aid] = channel_id
        try:
            first = _to_message(await self._wait(act.first, "Originate",
                                                 self.settings.action_timeout))
        except AmiClientError:
            self._originates.pop(aid, None)
            raise
        if (first.response or "").lower() != "success":
            self._originates.pop(aid, None)
            raise AmiActionError("Originate", first.get("Message", ""))
        self._spawn(self._await_originate(act, aid, timeout_ms / 1000.0 + 30.0))
        return aid

    async def _await_originate(self, act: _Action, aid: str, within: float) -> None:
        try:
            res = await self._wait(act.future, "OriginateResponse", within)
        except AmiClientError:
            # Lost or late: the tracker's resync decides what became of the call.
            return
        for m in res if isinstance(res, list) else [res]:
            msg = _to_message(m)
            if (msg.event or "").lower() == "originateresponse":
                self.inject(msg)

    def originate_channel_id(self, action_id: str | None) -> str | None:
        """The ChannelId of the Originate sent with ``action_id`` (None if unknown)."""
        if action_id is None:
            return None
        return self._originates.get(action_id)

    def forget_originate(self, action_id: str) -> None:
        self._originates.pop(action_id, None)

    # -- call control (docs/PROTOCOLS.md §2c) -----------------------------------

    async def setvar(self, channel: str, variable: str, value: str) -> None:
        """``Setvar`` on ``channel`` (name or Uniqueid; never empty: that sets a global).

        ``value`` must pass ``check_dialplan_value`` (it is expanded into application
        arguments). ``AmiActionError`` "No such channel" for an unknown channel.
        """
        _check_channel(channel)
        if not _VAR_NAME_RE.fullmatch(variable):
            raise ValueError(f"invalid variable name {variable!r}")
        check_dialplan_value(value)
        await self.send_action("Setvar", {"Channel": channel, "Variable": variable,
                                          "Value": value})

    async def getvar(self, channel: str, variable: str) -> str:
        """``Getvar`` on ``channel``: the value ('' when unset)."""
        _check_channel(channel)
        if not _VAR_NAME_RE.fullmatch(variable):
            raise ValueError(f"invalid variable name {variable!r}")
        res = await self.send_action("Getvar", {"Channel": channel, "Variable": variable})
        msg = res[0] if isinstance(res, list) else res
        return msg.get("Value") or ""

    async def play_dtmf(self, channel: str, digit: str, duration_ms: int = 250) -> None:
        """``PlayDTMF``: one digit (RFC 4733 to the channel's peer, never a 0x03 frame).

        Asterisk sends only the first character and blocks for ``duration_ms`` before
        answering (docs/PROTOCOLS.md §2c.3), so the reply timeout includes it.
        """
        _check_channel(channel)
        if len(digit) != 1 or not _DTMF_RE.fullmatch(digit) or digit in "wW":
            raise ValueError(f"invalid DTMF digit {digit!r}")
        if not 40 <= duration_ms <= 5000:
            raise ValueError("DTMF duration must be within 40..5000 ms")
        await self.send_action(
            "PlayDTMF", {"Channel": channel, "Digit": digit.upper(),
                         "Duration": str(duration_ms)},
            timeout=self.settings.action_timeout + duration_ms / 1000.0,
            # panoramisk reads a reply ending "successfully queued" as the start of an
            # Originate-style list and indexes the action's Async field (KeyError, the
            # connection drops): as_list=False makes it a plain reply.
            as_list=False)

    async def send_digits(self, channel: str, digits: str, duration_ms: int = 250,
                          *, pause_s: float = DTMF_PAUSE_S) -> int:
        """Twilio ``sendDigits``: each digit through ``play_dtmf``, in order, each after
        the previous reply; ``w`` waits ``pause_s``. Returns the digits sent."""
        if not _DTMF_RE.fullmatch(digits) or len(digits) > 64:
            raise ValueError(f"invalid DTMF string {digits!r}")
        sent = 0
        for ch in digits:
            if ch in "wW":
                await asyncio.sleep(pause_s)
                continue
            await self.play_dtmf(channel, ch, duration_ms)
            sent += 1
        return sent

    async def redirect(self, channel: str, context: str, exten: str = "s",
                       priority: int = 1, *, extra_channel: str | None = None) -> None:
        """``Redirect`` out of AudioSocket: the gateway sees a plain EOF (a move, not a
        hangup); "Channel does not exist: <name>" for an unknown channel."""
        _check_channel(channel)
        if not _CONTEXT_RE.fullmatch(context) or not _EXTEN_RE.fullmatch(exten) \
                or not 1 <= priority <= 10_000:
            raise ValueError("invalid Redirect destination")
        fields: dict[str, str | Sequence[str]] = {
            "Channel": channel, "Context": context, "Exten": exten, "Priority": str(priority)}
        if extra_channel:
            fields.update({"ExtraChannel": _check_channel(extra_channel),
                           "ExtraContext": context, "ExtraExten": exten,
                           "ExtraPriority": str(priority)})
        await self.send_action("Redirect", fields)

    async def bridge(self, channel1: str, channel2: str, *, tone: bool = False) -> None:
        """``Bridge`` two channels ("Channels have been bridged"); both leave their
        applications (a channel in AudioSocket: the gateway sees EOF)."""
        await self.send_action("Bridge", {"Channel1": _check_channel(channel1),
                                          "Channel2": _check_channel(channel2),
                                          "Tone": "yes" if tone else "no"})

