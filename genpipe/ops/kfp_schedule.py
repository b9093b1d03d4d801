"""When a KFP recurring run fires: its cron (checked as KFP parses it) or interval, described.

`genpipe schedule --cron/--every` checks its trigger here before anything is uploaded, so a
bad one is one line naming the field and its valid range instead of a server error.
"""

from __future__ import annotations

import re
from typing import Any

from zoo.errors import ConfigError

_EVERY_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")

# KFP's API server (server/api_converter.go toModelJob) and its ScheduledWorkflow controller
# parse cron with robfig/cron v1's cron.Parse: seconds minutes hours day-of-month month
# day-of-week, each a list of `*`/`?`, N, N-M or names (jan-dec, sun-sat), with an optional
# /STEP; or a descriptor. (That parser also takes 5 fields, reading them seconds-first, so the
# usual Unix `0 3 * * *` would run hourly: refused here.)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate(_WEEKDAYS)}),
)
_CRON_DESCRIPTORS = (
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
)
_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$|^[-+]?0$")
_CRON_HELP = "KFP cron: seconds minutes hours day-of-month month day-of-week, e.g. '0 0 3 * * *'"


def cron_expression(cron: str) -> str:
    """Check a KFP cron the way KFP parses it (robfig/cron v1, 6 fields, seconds first, or a
    descriptor such as @daily / @every 1h30m); the normalized expression, or one ConfigError
    naming the field and its valid range."""
    spec = " ".join(cron.split())
    if spec.startswith("@"):
        if spec in _CRON_DESCRIPTORS:
            return spec
        if spec.startswith("@every ") and _GO_DURATION.match(spec[len("@every ") :]):
            return spec
        raise ConfigError(
            f"--cron {cron!r}: unknown descriptor; use one of {', '.join(_CRON_DESCRIPTORS)} "
            "or '@every DURATION' (e.g. @every 1h30m)"
        )
    fields = spec.split()
    if len(fields) != 6:
        hint = f" (did you mean '0 {spec}'?)" if len(fields) == 5 else ""
        raise ConfigError(
            f"--cron {cron!r} has {len(fields)} fields; KFP cron has 6, seconds first, "
            f"e.g. '0 0 3 * * *' for 03:00 every day{hint}"
        )
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            if part:  # robfig skips empty list items
                problem = _cron_part_problem(part, low, high, names)
                if problem:
                    named = f" or names {list(names)[0]}-{list(names)[-1]}" if names else ""
                    raise ConfigError(
                        f"--cron {cron!r}: {name} {part!r} {problem}; valid: {low}-{high}{named}, "
                        f"*, ?, lists, ranges and /steps ({_CRON_HELP})"
                    )
    return spec


def _cron_part_problem(part: str, low: int, high: int, names: dict[str, int]) -> str:
    """Why one list item of a cron field is invalid ('' if it is valid)."""
    range_part, slash, step = part.partition("/")
    if slash:
        if "/" in step:
            return "has more than one '/'"
        if not re.fullmatch(r"\+?\d+", step) or int(step) == 0:
            return f"has step {step!r}, not a positive whole number"
    if range_part in ("*", "?"):
        return ""
    bounds = range_part.split("-")
    if len(bounds) > 2:
        return "has more than one '-'"
    values = []
    for b in bounds:
        if b.lower() in names:
            values.append(names[b.lower()])
        elif re.fullmatch(r"\+?\d+", b):
            values.append(int(b))
        else:
            return f"has {b!r}, which is not a number" + (" or a name" if names else "")
    start = values[0]
    end = values[-1] if len(values) == 2 else (high if slash else start)
    if not (low <= start <= high and low <= end <= high):
        return "is out of range"
    if start > end:
        return f"starts after it ends ({start} > {end})"
    return ""


def interval_seconds(every: str) -> int:
    """'24h', '90m', '1d12h', '3600s' -> seconds (at least one minute)."""
    m = _EVERY_RE.match(every.strip())
    if not every.strip() or not m or not any(m.groups()):
        raise ConfigError(f"--every {every!r} is not a duration: use e.g. 24h, 90m, 1d12h or 3600s")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds < 60:
        raise ConfigError(f"--every {every!r} is {seconds}s: the minimum interval is 60s")
    return seconds


def describe_trigger(r: Any) -> str:
    """A recurring run's trigger in words: 'cron 0 0 3 * * *' or 'every 3600s'."""
    trig = r.trigger
    if trig and trig.cron_schedule and trig.cron_schedule.cron:
        return f"cron {trig.cron_schedule.cron}"
    if trig and trig.periodic_schedule and trig.periodic_schedule.interval_second:
        return f"every {int(trig.periodic_schedule.interval_second)}s"
    return "?"
