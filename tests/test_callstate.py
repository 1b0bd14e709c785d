"""The call state machine: table-driven paths, helpers, and a property test."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiosocket_gw.callstate import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    CallInput,
    CallStatus,
    hangup_cause_text,
    is_failure_cause,
    is_transition,
    next_status,
    status_for_hangup_before_answer,
    status_from_originate_reason,
)

S = CallStatus
I = CallInput  # noqa: E741


def test_status_values_are_twilio_strings() -> None:
    assert [s.value for s in CallStatus] == [
        "queued",
        "ringing",
        "in-progress",
        "completed",
        "busy",
        "failed",
        "no-answer",
        "canceled",
    ]
    assert str(S.IN_PROGRESS) == "in-progress"
    assert S("no-answer") is S.NO_ANSWER
    assert f"{S.IN_PROGRESS}" == "in-progress"
    assert json.dumps({"status": S.NO_ANSWER}) == '{"status": "no-answer"}'


def test_terminal_set() -> None:
    assert TERMINAL == {S.COMPLETED, S.BUSY, S.FAILED, S.NO_ANSWER, S.CANCELED}
    assert ACTIVE == {S.QUEUED, S.RINGING, S.IN_PROGRESS}
    assert S.BUSY.is_terminal and not S.RINGING.is_terminal


def test_table_invariants() -> None:
    for (src, inp), dst in TRANSITIONS.items():
        assert src not in TERMINAL, (src, inp)
        assert dst is not src, (src, inp)
        assert is_transition(src, inp)
    # Every active status can end somehow, and every terminal status is reachable.
    reachable = set(TRANSITIONS.values())
    assert TERMINAL <= reachable
    with pytest.raises(TypeError):
        TRANSITIONS[(S.QUEUED, I.ANSWERED)] = S.FAILED  # type: ignore[index]


def run(inputs: list[tuple[CallInput, int | None]], start: CallStatus = S.QUEUED) -> list[S]:
    status = start
    seen = []
    for inp, cause in inputs:
        status = next_status(status, inp, cause=cause)
        seen.append(status)
    return seen


PATHS: list[tuple[str, list[tuple[CallInput, int | None]], list[CallStatus]]] = [
    (
        "inbound answered then completed by caller BYE",
        [(I.ROUTED_INBOUND, None), (I.ANSWERED, None), (I.HANGUP, 0)],
        [S.RINGING, S.IN_PROGRESS, S.COMPLETED],
    ),
    (
        "inbound EOF first, then AMI Hangup",
        [(I.ROUTED_INBOUND, None), (I.ANSWERED, None), (I.AUDIOSOCKET_EOF, None), (I.HANGUP, 16)],
        [S.RINGING, S.IN_PROGRESS, S.COMPLETED, S.COMPLETED],
    ),
    (
        "inbound caller gives up before answer",
        [(I.ROUTED_INBOUND, None), (I.HANGUP, 0)],
        [S.RINGING, S.CANCELED],
    ),
    (
        "inbound bot hangs up",
        [(I.ROUTED_INBOUND, None), (I.ANSWERED, None), (I.GATEWAY_HANGUP, None), (I.HANGUP, 16)],
        [S.RINGING, S.IN_PROGRESS, S.COMPLETED, S.COMPLETED],
    ),
    (
        "outbound answered",
        [
            (I.ORIGINATE_QUEUED, None),
            (I.RINGING, None),
            (status_from_originate_reason(4), None),
            (I.HANGUP, 16),
        ],
        [S.QUEUED, S.RINGING, S.IN_PROGRESS, S.COMPLETED],
    ),
    (
        "outbound busy (Hangup 17 then OriginateResponse 5)",
        [(I.ORIGINATE_QUEUED, None), (I.HANGUP, 17), (status_from_originate_reason(5), None)],
        [S.QUEUED, S.BUSY, S.BUSY],
    ),
    (
        "outbound busy (OriginateResponse only)",
        [(I.ORIGINATE_QUEUED, None), (I.RINGING, None), (status_from_originate_reason(5), None)],
        [S.QUEUED, S.RINGING, S.BUSY],
    ),
    (
        "outbound no answer (ring timeout)",
        [(I.ORIGINATE_QUEUED, None), (I.RINGING, None), (status_from_originate_reason(3), None)],
        [S.QUEUED, S.RINGING, S.NO_ANSWER],
    ),
    (
        "outbound congestion",
        [(I.ORIGINATE_QUEUED, None), (status_from_originate_reason(8), None), (I.HANGUP, 34)],
        [S.QUEUED, S.FAILED, S.FAILED],
    ),
    (
        "outbound failed (unknown extension)",
        [(I.ORIGINATE_QUEUED, None), (status_from_originate_reason(0), None)],
        [S.QUEUED, S.FAILED],
    ),
    (
        "outbound canceled while ringing",
        [(I.ORIGINATE_QUEUED, None), (I.RINGING, None), (I.CANCELED, None), (I.HANGUP, 16)],
        [S.QUEUED, S.RINGING, S.CANCELED, S.CANCELED],
    ),
    (
        "in progress call vanished at resync",
        [(I.ROUTED_INBOUND, None), (I.ANSWERED, None), (I.VANISHED, None)],
        [S.RINGING, S.IN_PROGRESS, S.COMPLETED],
    ),
    (
        "ringing call vanished at resync",
        [(I.ORIGINATE_QUEUED, None), (I.RINGING, None), (I.VANISHED, None)],
        [S.QUEUED, S.RINGING, S.FAILED],
    ),
    (
        "AudioSocket closed before its UUID (channel not answered)",
        [(I.ROUTED_INBOUND, None), (I.AUDIOSOCKET_EOF, None)],
        [S.RINGING, S.FAILED],
    ),
    (
        "late RINGING and duplicate ANSWERED are ignored",
        [(I.ORIGINATE_QUEUED, None), (I.ANSWERED, None), (I.RINGING, None), (I.ANSWERED, None)],
        [S.QUEUED, S.IN_PROGRESS, S.IN_PROGRESS, S.IN_PROGRESS],
    ),
    (
        "originate failure after answer is ignored",
        [(I.ANSWERED, None), (I.ORIGINATE_FAILED, None), (I.HANGUP, 16)],
        [S.IN_PROGRESS, S.IN_PROGRESS, S.COMPLETED],
    ),
]


@pytest.mark.parametrize(("inputs", "expected"), [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_documented_paths(
    inputs: list[tuple[CallInput, int | None]], expected: list[CallStatus]
) -> None:
    assert run(inputs) == expected


def test_hangup_plus_eof_counts_once() -> None:
    status = S.IN_PROGRESS
    ends = 0
    for inp in (I.HANGUP, I.AUDIOSOCKET_EOF, I.HANGUP, I.GATEWAY_HANGUP):
        if is_transition(status, inp):
            ends += 1
        status = next_status(status, inp)
    assert status is S.COMPLETED
    assert ends == 1


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("inp", list(CallInput))
def test_terminal_absorbs_everything(terminal: CallStatus, inp: CallInput) -> None:
    assert next_status(terminal, inp) is terminal
    assert next_status(terminal, inp, cause=17) is terminal
    assert not is_transition(terminal, inp)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (4, I.ANSWERED),
        (5, I.ORIGINATE_FAILED_BUSY),
        (3, I.ORIGINATE_NO_ANSWER),
        (2, I.ORIGINATE_NO_ANSWER),
        (0, I.ORIGINATE_FAILED),
        (1, I.ORIGINATE_FAILED),
        (8, I.ORIGINATE_FAILED),
        (99, I.ORIGINATE_FAILED),
    ],
)
def test_originate_reason(reason: int, expected: CallInput) -> None:
    assert status_from_originate_reason(reason) is expected


@pytest.mark.parametrize(
    ("cause", "expected"),
    [
        (17, S.BUSY),
        (18, S.NO_ANSWER),
        (19, S.NO_ANSWER),
        (16, S.CANCELED),
        (0, S.CANCELED),
        (21, S.FAILED),
        (1, S.FAILED),
        (34, S.FAILED),
        (38, S.FAILED),
        (127, S.FAILED),
    ],
)
def test_hangup_before_answer(cause: int, expected: CallStatus) -> None:
    assert status_for_hangup_before_answer(cause) is expected
    for pre in (S.QUEUED, S.RINGING):
        assert next_status(pre, I.HANGUP, cause=cause) is expected
    # After answer, any cause just completes the call.
    assert next_status(S.IN_PROGRESS, I.HANGUP, cause=cause) is S.COMPLETED


def test_hangup_before_answer_without_cause_is_failed() -> None:
    assert next_status(S.RINGING, I.HANGUP) is S.FAILED


def test_cause_text() -> None:
    assert hangup_cause_text(16) == "Normal Clearing"
    assert hangup_cause_text(17) == "User busy"
    assert "not a failure" in hangup_cause_text(0)
    assert hangup_cause_text(4242) == "Cause 4242"
    for code in (1, 18, 19, 21, 27, 34, 38, 41, 127):
        assert not hangup_cause_text(code).startswith("Cause ")
    assert not is_failure_cause(0)
    assert not is_failure_cause(16)
    assert is_failure_cause(17)


inputs_st = st.lists(
    st.tuples(st.sampled_from(list(CallInput)), st.none() | st.integers(0, 130)), max_size=40
)


@given(start=st.sampled_from(list(CallStatus)), inputs=inputs_st)
def test_any_sequence_stays_valid_and_terminal_is_final(
    start: CallStatus, inputs: list[tuple[CallInput, int | None]]
) -> None:
    status = start
    terminal_at: CallStatus | None = start if start in TERMINAL else None
    answered = start is S.IN_PROGRESS
    for inp, cause in inputs:
        new = next_status(status, inp, cause=cause)
        assert isinstance(new, CallStatus)
        assert is_transition(status, inp, cause=cause) == (new is not status)
        if terminal_at is not None:
            assert new is terminal_at
        elif new in TERMINAL:
            terminal_at = new
            # Once answered, a call can only end as completed.
            if answered:
                assert new is S.COMPLETED
        if new is S.IN_PROGRESS:
            answered = True
        # Never back to queued / ringing once answered.
        if answered:
            assert new in {S.IN_PROGRESS, S.COMPLETED} or new is terminal_at
        status = new
