"""JSON over HTTP with bounded, logged retries: the one client of every served teacher.

Written on the standard library's `urllib` rather than `requests`/`httpx` so that a served
teacher adds no dependency; what a teacher server needs is small (POST JSON, a bearer
key, a timeout, retries) and the retry policy is the part worth owning:

- transient faults are retried with exponential back-off and a little jitter: the server
  refusing or dropping the connection (down, restarting), a timeout, HTTP 408, 409, 429 and
  5xx; each retry is logged as a warning naming the fault and the wait;
- anything else (401 a wrong key, 404 a wrong path, 400 a request the server rejects) is
  not going to get better: it fails at once with the server's own words;
- after the last retry the error names the URL, the tries and the last fault.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any

from distill.core.errors import ConfigError, DataError

log = logging.getLogger("distill.http")

RETRIED_STATUS = frozenset({408, 409, 429})


class ServerError(DataError):
    """A server answered with an error that retrying will not fix, or did not answer."""


def bearer_headers(api_key_env: str | None, where: str) -> dict[str, str]:
    """JSON headers, with `Authorization: Bearer $KEY` read from the environment variable
    named `api_key_env` (keys never go in config files)."""
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(
                f"{where}.api_key_env: the environment variable {api_key_env!r} is not set; "
                f"export it (keys never go in config files)"
            )
        headers["Authorization"] = f"Bearer {key}"
    return headers


def request_json(
    url: str,
    body: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    pause: Any = None,
) -> Any:
    """POST `body` (GET when None) to `url` and return the decoded JSON answer, retrying
    transient faults `retries` times with back-off `backoff`, 2x`backoff`, ... (at most
    `max_backoff` seconds). `pause` (e.g. a rate limiter) is called before every try."""
    data = None if body is None else json.dumps(body).encode()
    delay, fault = backoff, ""
    for attempt in range(retries + 1):
        if pause is not None:
            pause()
        request = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                raw = resp.read()
            try:
                return json.loads(raw.decode())
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ServerError(
                    f"{url} answered with something that is not JSON: {raw[:200]!r}"
                ) from None
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            fault = f"HTTP {e.code}"
            if e.code not in RETRIED_STATUS and e.code < 500:
                raise ServerError(f"{url} answered {fault}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            fault = str(getattr(e, "reason", e)) or type(e).__name__
        if attempt == retries:
            break
        wait = min(delay, max_backoff) * (1 + 0.1 * random.random())
        log.warning("%s: %s; retry %d of %d in %.1f s", url, fault, attempt + 1, retries, wait)
        time.sleep(wait)
        delay *= 2
    raise ServerError(
        f"{url} did not answer after {retries + 1} tries (last: {fault}); is the server up? "
        f"Raise the retries or timeout if it is only slow"
    )
