"""Where one process reaches another's HTTP views: this host by default, a URL where they run apart."""

from __future__ import annotations

from streams.settings import Settings


def test_the_sink_and_connectors_are_asked_on_this_host_by_default() -> None:
    s = Settings(web_host="0.0.0.0", sink_port=7067, connectors_port=7068)
    assert (s.sink_base_url, s.connectors_base_url) == ("http://127.0.0.1:7067", "http://127.0.0.1:7068")


def test_in_containers_of_their_own_they_are_asked_where_the_settings_say() -> None:
    s = Settings(sink_url="http://sink:6067/", connectors_url="http://connectors:6068")
    assert (s.sink_base_url, s.connectors_base_url) == ("http://sink:6067", "http://connectors:6068")
