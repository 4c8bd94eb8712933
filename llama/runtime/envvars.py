"""Numbers read from environment variables: the one place that parses them.

Two callers want different things from a malformed value. Deciding how to run (`backend.select`)
must refuse it with a message that names the variable, or the run would silently use another
rank or world size. Reporting an error that already happened (`cli.error_line`) must not raise a
second one over it, so it asks for the default instead (`strict=False`).
"""

import os
from datetime import timedelta
from typing import Mapping, Optional

from ..errors import ConfigError


def env_int(name: str, default: int, env: Optional[Mapping[str, str]] = None, *, strict: bool = True) -> int:
    """The integer in env[name] (os.environ by default); `default` when unset or empty.

    strict=True raises ConfigError for a value that is not an integer; strict=False returns
    `default` for it.
    """
    value = (os.environ if env is None else env).get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        if not strict:
            return default
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def env_seconds(name: str, default: timedelta, env: Optional[Mapping[str, str]] = None) -> timedelta:
    """A duration in seconds (> 0) from env[name]; `default` when unset or empty; ConfigError otherwise."""
    value = (os.environ if env is None else env).get(name, "")
    if value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10**7:  # also rejects nan and inf
        raise ConfigError(f"environment variable {name}={value!r} must be a number of seconds > 0, e.g. {name}=60")
    return timedelta(seconds=seconds)
