"""Serve the sandbox provider over HTTP with uvicorn."""

from __future__ import annotations

import uvicorn

from enrich_pipeline.sandbox.app import create_app
from enrich_pipeline.sandbox.config import SandboxConfig


def describe_limit(config: SandboxConfig) -> str:
    if config.rate_limit_per_min is None:
        return "no rate limit"
    return (
        f"rate limit {config.rate_limit_per_min}/min ({config.limit_algorithm}, "
        f"{config.header_style} headers, bulk counts per {config.bulk_cost})"
    )


def serve(host: str = "127.0.0.1", port: int = 8787, config: SandboxConfig | None = None) -> None:
    """Run the sandbox until interrupted."""
    config = config or SandboxConfig()
    print(f"Sandbox provider listening on http://{host}:{port} with {describe_limit(config)}")
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)
