from email.utils import formatdate

import httpx
import pytest

from enrich_pipeline.provider.ratelimit_headers import RateLimitInfo, parse_rate_limit

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("policy", "quota", "window_s"),
    [
        ("100/min", 100, 60.0),
        ("100/minute", 100, 60.0),
        ("100/m", 100, 60.0),
        ("10/s", 10, 1.0),
        ("10/sec", 10, 1.0),
        ("10/second", 10, 1.0),
        ("5000/hour", 5000, 3600.0),
        ("5000/h", 5000, 3600.0),
        (" 1000 / MIN ", 1000, 60.0),
        ('"default";q=100;w=60', 100, 60.0),
        ("100;w=60", 100, 60.0),
        # Several policies: the lowest rate is the one that binds (1000/day < 10/s).
        ('"burst";q=10;w=1, "daily";q=1000;w=86400', 1000, 86400.0),
        ('"a";q=100;w=60, "b";q=50;w=60', 50, 60.0),
        ('"broken";q=abc;w=1, "default";q=100;w=60', 100, 60.0),
    ],
)
def test_policy_forms(policy: str, quota: int, window_s: float) -> None:
    info = parse_rate_limit({"RateLimit-Policy": policy}, NOW)
    assert info == RateLimitInfo(policy_quota=quota, window_s=window_s)


@pytest.mark.parametrize(
    "policy",
    ["lots/min", "100/fortnight", "100/ms", '"default";q=abc;w=60', '"default";w=60', "", "/min"],
)
def test_malformed_policy_is_ignored(policy: str) -> None:
    assert parse_rate_limit({"RateLimit-Policy": policy}, NOW) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"RateLimit-Limit": "100"}, RateLimitInfo(limit=100)),
        ({"RateLimit-Limit": "100, 100;w=60"}, RateLimitInfo(limit=100)),
        ({"RateLimit-Remaining": "7"}, RateLimitInfo(remaining=7)),
        ({"ratelimit-remaining": "0"}, RateLimitInfo(remaining=0)),
        ({"RateLimit-Reset": "1700000030"}, RateLimitInfo(reset_at=1_700_000_030.0)),
        ({"RateLimit-Reset": "30"}, RateLimitInfo(reset_at=NOW + 30)),
        ({"RateLimit": '"default";r=50;t=30'}, RateLimitInfo(remaining=50, reset_at=NOW + 30)),
        ({"RateLimit": '"default";r=5'}, RateLimitInfo(remaining=5)),
        (
            {"RateLimit": '"burst";r=9;t=1, "daily";r=3;t=600'},
            RateLimitInfo(remaining=3, reset_at=NOW + 600),
        ),
        ({"Retry-After": "120"}, RateLimitInfo(retry_after_s=120.0)),
        ({"Retry-After": "1.5"}, RateLimitInfo(retry_after_s=1.5)),
        ({"Retry-After": formatdate(NOW + 90, usegmt=True)}, RateLimitInfo(retry_after_s=90.0)),
        ({"Retry-After": formatdate(NOW - 90, usegmt=True)}, RateLimitInfo(retry_after_s=0.0)),
        (
            {
                "RateLimit-Policy": "100/min",
                "RateLimit-Limit": "100",
                "RateLimit-Remaining": "42",
                "RateLimit-Reset": "1700000045",
                "Retry-After": "3",
            },
            RateLimitInfo(
                limit=100,
                remaining=42,
                reset_at=1_700_000_045.0,
                window_s=60.0,
                policy_quota=100,
                retry_after_s=3.0,
            ),
        ),
    ],
)
def test_header_forms(headers: dict[str, str], expected: RateLimitInfo) -> None:
    assert parse_rate_limit(headers, NOW) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"RateLimit-Limit": "many"},
        {"RateLimit-Limit": "-5"},
        {"RateLimit-Remaining": ""},
        {"RateLimit-Remaining": "1.5"},
        {"RateLimit-Reset": "soon"},
        {"RateLimit-Reset": "-10"},
        {"RateLimit-Reset": "nan"},
        {"RateLimit": '"default";r=x;t=30'},
        {"RateLimit": "garbage"},
        {"Retry-After": "tomorrow"},
        {"Retry-After": "-3"},
        {"Retry-After": "inf"},
    ],
)
def test_missing_or_malformed_headers_give_none(headers: dict[str, str]) -> None:
    assert parse_rate_limit(headers, NOW) is None


def test_legacy_remaining_and_reset_take_precedence_over_structured_field() -> None:
    info = parse_rate_limit(
        {
            "RateLimit-Remaining": "4",
            "RateLimit-Reset": "20",
            "RateLimit": '"default";r=50;t=30',
        },
        NOW,
    )
    assert info == RateLimitInfo(remaining=4, reset_at=NOW + 20)


def test_malformed_header_does_not_hide_the_valid_ones() -> None:
    info = parse_rate_limit(httpx.Headers({"RateLimit-Remaining": "oops", "Retry-After": "2"}), NOW)
    assert info == RateLimitInfo(retry_after_s=2.0)
