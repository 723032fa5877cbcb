"""Veil gateway: the FastAPI app, its routes and the HTTP mapping of the service layer (:mod:`service`); no torch."""
