"""The warehouse's notion of now: naive UTC, as every timestamp column stores it."""

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
