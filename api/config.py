"""The gateway's configuration: the shared :class:`service.config.Settings` and its shipped catalogue.

Only ``benchmarks/service.py`` still imports these names from here; new code imports
:mod:`service.config` and :data:`api.methods.DEFAULT_METHODS_FILE`.
"""

from __future__ import annotations

from api.methods import DEFAULT_METHODS_FILE
from service.config import Settings, get_settings

__all__ = ["DEFAULT_METHODS_FILE", "Settings", "get_settings"]
