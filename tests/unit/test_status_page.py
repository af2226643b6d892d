"""The /status page: the facts people need, escaped, without secrets or payloads."""

from __future__ import annotations

from typing import Any

from gateway.status_page import render


def facts(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "0.1.0",
        "now": "2026-11-27T10:00:00Z",
        "up_since": "2026-11-27T09:00:00Z",
        "platform": {"status": "up", "since": "2026-11-27T09:00:01Z"},
        "circuits": [{"name": "upstream", "state": "closed", "since": "x", "reason": None}],
        "dispatcher": {"paused": False, "in_flight": 0},
        "outbox": {
            "counts": {"queued": 3, "delivered": 10, "dead": 1},
            "oldest_queued_age_s": 300.0,
        },
    }
    base.update(overrides)
    return base


def test_healthy_page_shows_counts_and_oldest_age() -> None:
    """Counts per state and the oldest queued age are on the page."""
    page = render(facts())
    assert "Platform up" in page
    assert "<td class='n'>3</td>" in page
    assert "oldest queued: 5 min" in page
    assert "needs on-call" in page


def test_open_circuit_headline() -> None:
    """An open circuit says plainly that submissions are being queued."""
    circuits = [{"name": "upstream", "state": "open", "since": "x", "reason": "5 failures"}]
    assert "Platform down — submissions are being queued" in render(facts(circuits=circuits))


def test_values_are_escaped() -> None:
    """Anything shown is HTML-escaped (a reason typed by on-call cannot inject markup)."""
    circuits = [{"name": "upstream", "state": "forced_open", "since": "x", "reason": "<script>"}]
    page = render(facts(circuits=circuits))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_no_external_assets() -> None:
    """The page is self-contained: no scripts, stylesheets or images from elsewhere."""
    page = render(facts())
    assert "http://" not in page
    assert "https://" not in page
    assert "<script" not in page


def test_store_unavailable_is_reported() -> None:
    """When the store cannot be read the page says so instead of failing."""
    page = render(facts(outbox={"error": "disk I/O error"}))
    assert "store unavailable: disk I/O error" in page
