"""Veil core: pure PyTorch library of forgers, protection methods, transforms and metrics.

This package must never import web or queue code (fastapi, celery, redis, boto3).
"""

__version__ = "0.1.0"
