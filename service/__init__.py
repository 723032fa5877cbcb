"""Veil's service layer, shared by the gateway (api/) and the workers (worker/): settings, job records and
their state machine, storage, the queue, webhooks, API keys and upload validation. No FastAPI, no torch."""
