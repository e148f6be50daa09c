"""The rules every section of a spec mapping follows: known keys only, optional sections that are
mappings, booleans that are booleans. Each appends its problem to `problems` (so a spec reports all
of them at once) and names the key and the fix."""

from __future__ import annotations

from typing import Any

__all__ = ["check_keys", "optional_section", "check_bool"]


def check_keys(raw: dict, required, optional, prefix: str, problems: list[str]) -> None:
    for key in required:
        if key not in raw:
            problems.append(f"missing key `{prefix}{key}`: add it (required keys: "
                            f"{', '.join(prefix + k for k in required)})")
    allowed = set(required) | set(optional)
    for key in sorted(set(raw) - allowed, key=str):
        problems.append(f"unknown key `{prefix}{key}`: remove it or fix its spelling "
                        f"(allowed: {', '.join(prefix + k for k in (*required, *optional))})")
def optional_section(value: Any, name: str, allowed: tuple[str, ...],
                      problems: list[str]) -> dict | None:
    """An optional mapping section with its keys checked: {} when absent, None when not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"`{name}` must be a mapping, got {value!r}")
        return None
    check_keys(value, (), allowed, f"{name}.", problems)
    return value
def check_bool(settings: dict, key: str, prefix: str, problems: list[str]) -> None:
    """Drop (and report) a setting that should be true or false but is not."""
    if key in settings and not isinstance(settings[key], bool):
        problems.append(f"`{prefix}.{key}` {settings.pop(key)!r} must be true or false")
