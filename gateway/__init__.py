"""invoice-gateway: a resilience gateway in front of an e-invoice platform."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
