"""``from`` / ``to`` on the routes that take time bounds (``GET /v1/audit``, ``GET /v1/usage``)
are ISO 8601 date-times: anything else is refused with the API's error shape (pydantic alone
would take ``from=-10801`` as Unix time, which the schema fuzzer found), and a bound without
a zone means UTC."""

from __future__ import annotations

import pytest
from support.live_api import LiveRegistry

ROUTES = ("/v1/audit", "/v1/usage")
REFUSED = ("-10801", "0", "1733011200", "1e9", "yesterday", "2026-13-01", "12/01/2026", "")
ACCEPTED = (
    "2026-12-01",
    "2026-12-01T00:00:00",
    "2026-12-01T00:00:00Z",
    "2026-12-01T03:00:00+03:00",
)


@pytest.mark.parametrize("route", ROUTES)
def test_time_bounds_must_be_iso_8601(live_registry: LiveRegistry, route: str) -> None:
    with live_registry.http(live_registry.admin_token) as client:
        for bound in ("from", "to"):
            for value in REFUSED:
                answer = client.get(route, params={bound: value})
                assert answer.status_code in (400, 422), (bound, value, answer.text)
                assert "error" in answer.json() or "detail" in answer.json(), answer.text
            for value in ACCEPTED:
                answer = client.get(route, params={bound: value})
                assert answer.status_code == 200, (bound, value, answer.text)
