"""Twilio identities: one derivation per SID, the account's SID and auth token lookup."""

from __future__ import annotations

import re
import uuid

import pytest

from audiosocket_gw.tenants import Agent, Tenant
from audiosocket_gw.twilio.ids import (
    account_sid_for,
    auth_token_for,
    call_id_for_sid,
    call_sid_for,
    derived_account_sid,
    is_sid,
    recording_sid_for,
    stream_sid_for,
)

SID = "AC" + "0123456789abcdef" * 2
OTHER = "AC" + "fedcba9876543210" * 2


@pytest.mark.parametrize(
    ("derive", "prefix"),
    [(call_sid_for, "CA"), (stream_sid_for, "MZ"), (recording_sid_for, "RE")],
)
def test_call_sids_are_the_call_uuid_and_map_back(derive, prefix):
    call_id = str(uuid.uuid4())
    sid = derive(call_id)
    assert sid == prefix + uuid.UUID(call_id).hex
    assert derive(call_id) == sid and derive(call_id.upper()) == sid
    assert is_sid(prefix, sid)
    assert call_id_for_sid(sid) == call_id
    assert derive(str(uuid.uuid4())) != sid


@pytest.mark.parametrize("derive", [call_sid_for, stream_sid_for, recording_sid_for])
def test_call_ids_that_are_not_uuids_are_hashed(derive):
    sid = derive("c1")
    assert re.fullmatch(r"[A-Z]{2}[0-9a-f]{32}", sid)
    assert derive("c1") == sid != derive("c2")


def test_call_id_for_sid_refuses_what_is_not_a_call_sid():
    assert call_id_for_sid(derived_account_sid("acme")) is None
    assert call_id_for_sid("CA123") is None
    assert call_id_for_sid("PN" + "0" * 32) is None


def test_account_sid_precedence():
    agent = Agent(name="a", tenant="acme", backend="echo")
    imported = Agent(name="b", tenant="acme", backend="echo", extra={"account_sid": OTHER})
    tenant = Tenant(id="acme", name="Acme", twilio_account_sid=SID)
    bare = Tenant(id="acme", name="Acme")
    derived = derived_account_sid("acme")
    assert is_sid("AC", derived) and derived == derived_account_sid("acme")
    assert derived != derived_account_sid("other")
    assert account_sid_for("acme", tenant=tenant, agent=agent, env={}) == SID
    assert account_sid_for("acme", tenant=tenant, agent=imported, env={}) == OTHER
    assert account_sid_for("acme", tenant=bare, agent=agent, env={}) == derived
    assert account_sid_for("acme", tenant=None, agent=None, env={}) == derived
    env = {"AIGW_TWILIO_ACCOUNT_SID": OTHER}
    assert account_sid_for("acme", tenant=bare, agent=agent, env=env) == OTHER
    assert account_sid_for("acme", tenant=tenant, agent=agent, env=env) == SID


def test_auth_token_precedence():
    agent = Agent(name="a", tenant="acme", backend="echo")
    own = Agent(name="b", tenant="acme", backend="echo", extra={"auth_token_env": "B_TOKEN"})
    tenant = Tenant(id="acme", name="Acme", twilio_auth_token_env="ACME_TOKEN")
    bare = Tenant(id="acme", name="Acme")
    env = {"AIGW_TWILIO_AUTH_TOKEN": "global", "ACME_TOKEN": "acme", "B_TOKEN": "b"}
    assert auth_token_for(tenant=tenant, agent=agent, env=env) == "acme"
    assert auth_token_for(tenant=tenant, agent=own, env=env) == "b"
    assert auth_token_for(tenant=bare, agent=agent, env=env) == "global"
    assert auth_token_for(tenant=None, agent=None, env=env) == "global"
    assert auth_token_for(tenant=None, agent=None, env={}) is None
    # A tenant naming a variable that is unset sends unsigned, never another account's token.
    assert auth_token_for(tenant=tenant, agent=agent, env={"AIGW_TWILIO_AUTH_TOKEN": "g"}) is None
    assert auth_token_for(tenant=tenant, agent=agent, env={"ACME_TOKEN": ""}) is None


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
        is_sid(prefix, "MZ" + "0" * 32)
