"""A state read forwarded to the worker owning its key asks for the same key, however it is spelled."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from streams.engine.host import forward_url


def test_a_key_with_reserved_characters_is_forwarded_as_it_was_sent() -> None:
    """Changed on purpose: the decoded path was forwarded, so /stock/SKU%3Fx asked the owner for SKU with a
    query string ?x (another key's state, or a 503)."""
    request = make_mocked_request("GET", "/stock/SKU%3Fx%23y%2Fz")
    assert forward_url("10.0.0.2:6066", request) == "http://10.0.0.2:6066/stock/SKU%3Fx%23y%2Fz"
