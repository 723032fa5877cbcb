"""The Celery tasks, one module per family (``include=["worker.tasks"]`` registers them all).

* :mod:`worker.tasks.protocol`: the job protocol every task follows, and the shared helpers;
* :mod:`worker.tasks.photo`: ``veil.protect`` (gpu), one photo;
* :mod:`worker.tasks.archives`: ``veil.protect_archive`` (io), ``veil.protect_group`` (gpu),
  ``veil.pack_archive`` (io);
* :mod:`worker.tasks.webhooks`: ``veil.deliver_webhook`` (io).

Task names and queues are defined once, in :mod:`service.queue`.
"""

from worker.tasks import archives, photo, webhooks

__all__ = ["archives", "photo", "webhooks"]
