"""A workaround for kombu's Redis transport (5.7.0, the latest): a worker dies when Redis restarts while it
holds unacknowledged messages (held webhook retries: the normal state while a receiver is failing).

On the lost connection Celery closes the channel, which tries to give back ("restore") the messages it
held; by then the transport's connection is gone and kombu dereferences it (``'NoneType' object has no
attribute 'hostname'`` in ``_connparams``; upstream kombu #970 and #582, the same failure on other paths).
That error is not a connection error, so Celery treats it as unrecoverable and the worker exits.

With no connection the messages cannot be given back anyway (Redis is down): they stay in the broker's
unacknowledged set, from which the Redis transport redelivers them after the visibility timeout, as it does
for a worker that died. So the restore is skipped, with a warning, and the worker reconnects as it should.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_original_restore_unacked = kombu_redis.QoS.restore_unacked


def _restore_unacked(self: Any, client: Any = None) -> Any:
    if client is None and getattr(self.channel.connection, "client", None) is None:
        held = len(getattr(self, "_delivered", {}) or {})
        log.warning("broker connection gone: %d unacknowledged message(s) stay in the broker and are redelivered "
                    "after the visibility timeout", held)
        return None
    return _original_restore_unacked(self, client)


def patch_restore_unacked() -> None:
    """Install the workaround (idempotent)."""
    kombu_redis.QoS.restore_unacked = _restore_unacked  # type: ignore[method-assign]
