"""The bench package's surface: what the command line and the tests import."""

from __future__ import annotations

import gateway.tools.bench


def test_all_lists_exactly_the_names_the_package_exports() -> None:
    """`__all__` names every public name of the package and nothing that does not exist."""
    public = {
        name
        for name, value in vars(gateway.tools.bench).items()
        if not name.startswith("_") and not isinstance(value, type(gateway.tools.bench))
    }
    assert sorted(public) == sorted(gateway.tools.bench.__all__)
