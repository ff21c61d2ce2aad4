"""Every stream's decoder (ingest/refresh/status events, token revocations, usage flushes)
reads the entry through the one bounded parser (``events.models.event_json``): what the
parser refuses is a ``ValueError`` from each of them, never an event decoded from a
duplicate key's last value or a NaN."""

from __future__ import annotations

import json

import pytest

from events.models import decode
from events.revocations import TokenRevoked, decode_revocation
from events.usage import decode_usage

DECODERS = (decode, decode_revocation, decode_usage)
GOOD_REVOCATION = TokenRevoked(token_id=7, namespace="acme").model_dump_json()

HOSTILE = (
    # a duplicate key: pydantic alone would take the last value
    GOOD_REVOCATION[:-1] + ', "token_id": 8}',
    GOOD_REVOCATION.replace('"token_id":7', '"token_id":NaN'),
    '{"a":' * 100 + "1" + "}" * 100,  # deeper than the event bound
    '{"token_id": ' + "9" * 5000 + "}",  # an integer past the digit bound
    "not json",
    "",
)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.__name__)
@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_every_decoder_refuses_what_the_bounded_parser_refuses(decoder, raw: str) -> None:
    with pytest.raises(ValueError):
        decoder({b"event": raw.encode()})


def test_a_valid_revocation_still_decodes() -> None:
    event = decode_revocation({"event": GOOD_REVOCATION})
    assert (event.token_id, event.namespace) == (7, "acme")
    assert json.loads(GOOD_REVOCATION)["type"] == "token.revoked"
