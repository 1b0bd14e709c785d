"""Tests for X-Twilio-Signature computation and validation."""

from __future__ import annotations

import base64
import hashlib
import hmac

from audiosocket_gw.twilio.signature import compute_signature, validate_signature

# Twilio's published example (twilio-php tests RequestValidatorTest, also twilio-csharp and
# the old "webhooks security" docs): auth token 12345, this URL and these POST params.
TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_published_vector():
    assert compute_signature(TOKEN, URL, PARAMS) == SIGNATURE
    assert validate_signature(TOKEN, URL, PARAMS, SIGNATURE)


def test_param_order_does_not_matter():
    shuffled = dict(reversed(list(PARAMS.items())))
    assert compute_signature(TOKEN, URL, shuffled) == SIGNATURE


def test_matches_hand_computed_hmac():
    params = {"b": "2", "a": "1", "Z": "ü"}
    data = ("https://x.test/voice?q=1" + "Zü" + "a1" + "b2").encode()
    expected = base64.b64encode(hmac.new(b"tok", data, hashlib.sha1).digest()).decode()
    assert compute_signature("tok", "https://x.test/voice?q=1", params) == expected
    assert (
        compute_signature("tok", "https://x.test/voice", {})
        == base64.b64encode(
            hmac.new(b"tok", b"https://x.test/voice", hashlib.sha1).digest()
        ).decode()
    )


def test_tampering_fails():
    assert not validate_signature("54321", URL, PARAMS, SIGNATURE)
    assert not validate_signature(TOKEN, URL + "&x=1", PARAMS, SIGNATURE)
    assert not validate_signature(TOKEN, URL, {**PARAMS, "Digits": "9999"}, SIGNATURE)
    assert not validate_signature(TOKEN, URL, {**PARAMS, "Extra": ""}, SIGNATURE)
    assert not validate_signature(TOKEN, URL, PARAMS, SIGNATURE[:-1])
    assert not validate_signature(TOKEN, URL, PARAMS, "")
    assert not validate_signature(TOKEN, URL, PARAMS, "invalid 王")
    assert not validate_signature(TOKEN, URL, PARAMS, "\udcff")
