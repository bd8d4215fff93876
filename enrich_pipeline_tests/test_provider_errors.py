from enrich_pipeline.provider.errors import CreditsExhausted, ProviderAuthError, ProviderError


def test_401_names_the_setting_and_says_missing_or_wrong() -> None:
    error = ProviderAuthError(401, endpoint="POST /person/enrich", request_id="req-1")
    assert isinstance(error, ProviderError)
    assert str(error) == (
        "the enrichment API rejected the API key (HTTP 401 on POST /person/enrich): "
        "DATA_LEGION_API_KEY is missing or wrong (provider Request-ID: req-1)"
    )


def test_403_says_the_key_is_not_allowed_on_that_endpoint() -> None:
    error = ProviderAuthError(
        403, endpoint="POST /company/enrich/bulk", provider_message="plan excludes bulk"
    )
    message = str(error)
    assert "DATA_LEGION_API_KEY is not allowed on POST /company/enrich/bulk" in message
    assert "plan excludes bulk" in message
    assert "Request-ID" not in message


def test_402_without_details_still_says_work_is_kept() -> None:
    error = CreditsExhausted(endpoint="POST /person/enrich")
    assert str(error) == (
        "the enrichment API account has run out of credits (HTTP 402 on POST /person/enrich); "
        "stopped calling the API, results completed before this point are kept"
    )
    assert (error.credits_required, error.credits_available) == (None, None)
