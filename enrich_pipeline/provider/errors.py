"""Errors that end an enrichment run. Messages say what to fix and never carry the key."""

from __future__ import annotations

from enrich_pipeline.settings import SecretSettings
from enrich_pipeline.settings_base import env_name

API_KEY_SETTING = env_name(SecretSettings, "data_legion_api_key")


class ProviderError(Exception):
    """Base class for enrichment API failures that end a run rather than a single record."""


def _request_id_suffix(request_id: str | None) -> str:
    return f" (provider Request-ID: {request_id})" if request_id else ""


class ProviderAuthError(ProviderError):
    """401 (key missing or wrong) or 403 (key not allowed on that endpoint); never retried."""

    def __init__(
        self,
        status_code: int,
        *,
        endpoint: str,
        request_id: str | None = None,
        provider_message: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.endpoint = endpoint
        self.request_id = request_id
        if status_code == 401:
            problem = (
                f"the enrichment API rejected the API key (HTTP 401 on {endpoint}): "
                f"{API_KEY_SETTING} is missing or wrong"
            )
        else:
            problem = (
                f"the enrichment API key in {API_KEY_SETTING} is not allowed on {endpoint} "
                f"(HTTP {status_code}): check the key's plan or permissions"
            )
        detail = f"; provider says: {provider_message}" if provider_message else ""
        super().__init__(f"{problem}{detail}{_request_id_suffix(request_id)}")


class CreditsExhausted(ProviderError):
    """402 insufficient_credits: the run stops calling; results already received are kept."""

    def __init__(
        self,
        *,
        endpoint: str,
        credits_required: int | None = None,
        credits_available: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.credits_required = credits_required
        self.credits_available = credits_available
        self.request_id = request_id
        counts = [
            f"{label} {value}"
            for label, value in (
                ("credits required", credits_required),
                ("credits available", credits_available),
            )
            if value is not None
        ]
        numbers = f" ({', '.join(counts)})" if counts else ""
        super().__init__(
            f"the enrichment API account has run out of credits (HTTP 402 on {endpoint}){numbers}; "
            "stopped calling the API, results completed before this point are kept"
            f"{_request_id_suffix(request_id)}"
        )
