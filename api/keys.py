"""API keys live in :mod:`service.keys` (the gateway authenticates with :func:`service.keys.lookup_key`).

Only ``benchmarks/service.py`` still imports :func:`create_key` from here.
"""

from __future__ import annotations

from service.keys import create_key

__all__ = ["create_key"]
