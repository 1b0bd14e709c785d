"""The per-call options of REST-created calls, and the JSON shapes the SDKs read (pure)."""

from __future__ import annotations

from audiosocket_gw.callstate import CallStatus
from audiosocket_gw.recordings.queue import RecordingRow
from audiosocket_gw.store.base import CallRecord
from audiosocket_gw.twilio.callopts import CallOptions, status_callback_target
from audiosocket_gw.twilio.ids import call_sid_for, recording_sid_for
from audiosocket_gw.twilio.rest import call_json, recording_json

CALL_ID = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f"
AC = "AC" + "ab" * 16


def test_options_round_trip_through_metadata_and_ignore_other_keys() -> None:
    opts = CallOptions(twiml_url="https://a/x", twiml_method="GET", send_digits="1w2")
    meta = opts.to_metadata()
    assert meta == {"twiml_url": "https://a/x", "twiml_method": "GET", "send_digits": "1w2"}
    meta_plus = {**meta, "asterisk_uniqueid": "1.2", "record": 5}
    assert CallOptions.from_metadata(meta_plus) == opts
    assert opts.has_twiml and not CallOptions().has_twiml


def test_status_callback_target_call_wins_default_completed_else_agent() -> None:
    agent = ("https://agent/status", ("answered", "completed"))
    own = status_callback_target({"status_callback": "https://own/cb"}, *agent)
    assert own is not None and own.url == "https://own/cb"
    assert own.events == {"completed"} and own.method == "POST"
    get = status_callback_target({"status_callback": "https://own/cb",
                                  "status_callback_method": "get",
                                  "status_callback_event": "initiated ringing"}, *agent)
    assert get is not None and get.method == "GET" and get.events == {"initiated", "ringing"}
    fallback = status_callback_target({}, *agent)
    assert fallback is not None and fallback.url == "https://agent/status"
    assert fallback.events == {"answered", "completed"}
    assert status_callback_target({}, None, ()) is None


def test_call_json_has_the_fields_the_sdks_read() -> None:
    rec = CallRecord(id=CALL_ID, tenant="acme", agent="bot", direction="outbound",
                     from_="+15559990000", to="+15550001111", created_at=1_750_000_000.0,
                     status=CallStatus.COMPLETED, answered_at=1_750_000_002.0,
                     ended_at=1_750_000_012.5, billable_s=10.5, answered_by="human")
    body = call_json(rec, AC)
    for key in ("sid", "account_sid", "status", "direction", "from", "to", "from_formatted",
                "to_formatted", "start_time", "end_time", "duration", "answered_by", "price",
                "price_unit", "uri", "subresource_uris", "parent_call_sid", "date_created",
                "date_updated", "api_version", "caller_name", "forwarded_from", "group_sid",
                "queue_time", "trunk_sid", "phone_number_sid"):
        assert key in body, key
    assert body["sid"] == call_sid_for(CALL_ID) and body["direction"] == "outbound-api"
    assert body["duration"] == "11" and body["status"] == "completed"
    assert body["end_time"] == "Sun, 15 Jun 2025 15:06:52 +0000"
    assert body["subresource_uris"]["recordings"] == (
        f"/2010-04-01/Accounts/{AC}/Calls/{body['sid']}/Recordings.json")
    queued = call_json(CallRecord(id=CALL_ID, tenant="acme", agent="bot",
                                  direction="inbound", from_="", to="", created_at=1.0), AC)
    assert queued["start_time"] is None and queued["duration"] is None
    assert queued["direction"] == "inbound"


def test_recording_json_names_its_call_and_absolute_media() -> None:
    row = RecordingRow(call_id=CALL_ID, tenant="acme", agent="bot", source="gateway",
                       path="/x.wav", key="k", recording_sid=recording_sid_for(CALL_ID),
                       state="verified", attempts=1, sha256="", size=1, duration_s=4.6,
                       channels=2, captured_at=1_750_000_010.0, next_attempt_at=0.0)
    body = recording_json(row, AC, "https://gw:8080")
    assert body["call_sid"] == call_sid_for(CALL_ID) and body["duration"] == "5"
    assert body["media_url"] == (f"https://gw:8080/2010-04-01/Accounts/{AC}/Recordings/"
                                 f"{row.recording_sid}")
    assert body["status"] == "completed" and body["source"] == "StartCallRecordingAPI"
    assert body["start_time"] == "Sun, 15 Jun 2025 15:06:45 +0000"
