"""Reliability drills: named outage scenarios run through a real gateway, with the ledger check."""
