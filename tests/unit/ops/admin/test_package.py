"""The admin package's public surface."""

from __future__ import annotations

import gateway.ops.admin

EXPECTED = {"PREFIX", "AdminTokens", "Role", "admin_app", "mask", "openapi_document"}


def test_all_lists_the_public_surface() -> None:
    """`__all__` is exactly the intended surface, and every name in it exists."""
    assert EXPECTED == set(gateway.ops.admin.__all__)
    for name in gateway.ops.admin.__all__:
        assert hasattr(gateway.ops.admin, name), name
