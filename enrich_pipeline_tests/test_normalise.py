from __future__ import annotations

import pytest

from enrich_pipeline.normalise import (
    FREE_MAIL_DOMAINS,
    is_free_mail,
    normalise_email,
    normalise_phone,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  JANE.DOE@Acme.COM ", "jane.doe@acme.com"),
        ("Jane.Doe@acme.com", "jane.doe@acme.com"),
        ("\tbob+leads@example.co.uk\n", "bob+leads@example.co.uk"),
    ],
)
def test_valid_emails_are_trimmed_and_lower_cased(raw: str, expected: str) -> None:
    assert normalise_email(raw) == (expected, None)


@pytest.mark.parametrize(
    "raw", ["jane@@acme.com", "not-an-email", "bob@", "@acme.com", "john@acme", "a b@acme.com"]
)
def test_invalid_emails_give_a_reason_naming_the_value(raw: str) -> None:
    normalised, error = normalise_email(raw)
    assert normalised is None
    assert error is not None
    assert error.startswith(f"email {raw!r} is not a valid address: ")
    assert len(error) > len(f"email {raw!r} is not a valid address: ")


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_blank_email_is_absent_not_an_error(raw: str | None) -> None:
    assert normalise_email(raw) == (None, None)


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0134", "US", "+14155550134"),
        ("415.555.0199", "US", "+14155550199"),
        ("+1 (212) 555-0100", "US", "+12125550100"),
        ("2025550143", "US", "+12025550143"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        (" +44 161 496 0123 ", "US", "+441614960123"),
    ],
)
def test_phones_in_mixed_formats_become_e164(raw: str, region: str, expected: str) -> None:
    assert normalise_phone(raw, default_region=region) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12", "wrong number of digits"),
        ("n/a", "could not be parsed"),
        ("555-0134", "not a valid number"),  # right length for a local number, no area code
        ("020 7946 0958", "wrong number of digits"),  # a UK number read as a US one
    ],
)
def test_unusable_phones_give_a_reason(raw: str, reason: str) -> None:
    normalised, error = normalise_phone(raw)
    assert normalised is None
    assert error is not None
    assert raw in error
    assert reason in error


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_blank_phone_is_absent_not_an_error(raw: str | None) -> None:
    assert normalise_phone(raw) == (None, None)


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("gmail.com", True),
        ("GMail.com", True),
        ("yahoo.co.uk", True),
        ("proton.me", True),
        ("web.de", True),
        ("acme.com", False),
        ("mail.acme.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_free_mail(domain: str | None, expected: bool) -> None:
    assert is_free_mail(domain) is expected


def test_free_mail_list_covers_the_big_providers() -> None:
    big = {"gmail.com", "googlemail.com", "hotmail.com", "outlook.com", "icloud.com", "aol.com"}
    assert big <= FREE_MAIL_DOMAINS
    assert all(d == d.lower().strip() for d in FREE_MAIL_DOMAINS)


@pytest.mark.parametrize(
    ("raw", "runs"),
    [
        ("+tag@acme.com", False),
        ("-list@acme.com", False),
        ("o'brien@acme.com", False),
        ("=1+1@acme.com", True),
        ("=cmd|'calc'!a0@acme.com", True),
        ("+1|2@acme.com", True),
        ("-x!y@acme.com", True),
    ],
)
def test_an_address_a_spreadsheet_would_evaluate_is_refused_never_altered(
    raw: str, runs: bool
) -> None:
    normalised, error = normalise_email(raw)
    if runs:
        assert normalised is None
        assert error is not None and "would run as a formula" in error
    else:
        assert (normalised, error) == (raw, None)
