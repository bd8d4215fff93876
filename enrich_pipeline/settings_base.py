"""How a setting is declared, shared by the pipeline's settings and the sandbox's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Groups are set by field name in code and by environment variable (the alias) from outside;
# frozen because a run must not change its own configuration halfway.
SETTING_GROUP_CONFIG = ConfigDict(frozen=True, validate_by_name=True, validate_by_alias=True)

UNLIMITED = frozenset({"", "none", "unlimited"})


def setting(env: str, default: Any, meaning: str, **constraints: Any) -> Any:
    """One setting's declaration: ``env`` is the variable it is read from. The description, shown
    beside the resource configuration in the UI, names it."""
    return Field(default, validation_alias=env, description=f"{meaning} ({env})", **constraints)


def env_name(group: type[BaseModel], field: str) -> str:
    """The environment variable a setting is read from, for messages that name it."""
    alias = group.model_fields[field].validation_alias
    if not isinstance(alias, str):
        raise KeyError(f"{group.__name__}.{field} is not read from the environment")
    return alias


def group_values(source: BaseModel, group: type[BaseModel]) -> dict[str, Any]:
    """``source``'s values of every setting ``group`` declares that ``source`` has too: to
    build one group, or a resource made of groups, from another."""
    fields = type(source).model_fields
    return {name: getattr(source, name) for name in group.model_fields if name in fields}


def unlimited_as_none(value: Any) -> Any:
    """For limits where "unlimited" is a choice: ``none``, ``unlimited`` or empty."""
    if isinstance(value, str) and value.strip().lower() in UNLIMITED:
        return None
    return value
