"""Veil gateway: FastAPI app, and the service modules workers share (no torch, no ``core``)."""
