"""Veil's Celery workers: protection on the gpu queue, archives and webhooks on the io queue.

See ``worker/README.md`` and :mod:`worker.celery_app`. Nothing in this package imports torch at import
time: :mod:`worker.models` imports it (and ``core``) in the process that protects photos.
"""
