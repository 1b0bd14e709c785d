"""Tests for Twilio-shaped SIDs."""

from __future__ import annotations

import re

import pytest

from audiosocket_gw.twilio.ids import (
    is_sid,
    new_account_sid,
    new_call_sid,
    new_recording_sid,
    new_sid,
    new_stream_sid,
)


@pytest.mark.parametrize(
    ("factory", "prefix"),
    [
        (new_stream_sid, "MZ"),
        (new_call_sid, "CA"),
        (new_recording_sid, "RE"),
        (new_account_sid, "AC"),
    ],
)
def test_factories_make_prefix_and_32_lowercase_hex(factory, prefix):
    sids = {factory() for _ in range(200)}
    assert len(sids) == 200
    for sid in sids:
        assert re.fullmatch(prefix + r"[0-9a-f]{32}", sid)
        assert is_sid(prefix, sid)


def test_is_sid_rejects_wrong_shapes():
    good = "MZ" + "0123456789abcdef" * 2
    assert is_sid("MZ", good)
    assert not is_sid("CA", good)
    assert not is_sid("MZ", good.upper())
    assert not is_sid("MZ", good[:-1])
    assert not is_sid("MZ", good + "0")
    assert not is_sid("MZ", "MZ" + "g" * 32)
    assert not is_sid("MZ", "mz" + good[2:])
    assert not is_sid("MZ", good[:-1] + "\n")
    assert not is_sid("MZ", None)
    assert not is_sid("MZ", 12)


@pytest.mark.parametrize("prefix", ["", "M", "mz", "MZX", "M1"])
def test_bad_prefix_raises(prefix):
    with pytest.raises(ValueError):
        new_sid(prefix)
    with pytest.raises(ValueError):
        is_sid(prefix, "MZ" + "0" * 32)
