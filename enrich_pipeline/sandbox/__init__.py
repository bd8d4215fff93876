"""Sandbox provider: a local imitation of the Data Legion enrichment API, so the project runs
without an API key. Same paths, status codes, JSON shapes, headers and rate limiting."""

from enrich_pipeline.sandbox.app import create_app
from enrich_pipeline.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_app"]
