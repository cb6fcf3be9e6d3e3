"""A thin wrapper over `openai.OpenAI` for OpenAI-compatible chat servers.

It owns what the strategy should not care about: the response-format ladder (json_schema,
then json_object with a schema as llama.cpp wants it, then plain text), per-request
timeouts, backoff on 429/5xx that honours Retry-After, and a preflight call so a bad key
fails at start-up. The openai client's own retries are off, so every wait is ours, bounded
and reported. The API key is held only by the openai client and scrubbed from every message.

Building a ChatClient reads no environment variable and opens no connection: the URL and
key are what the caller passes (the command line resolves OPENAI_BASE_URL and
OPENAI_API_KEY), and the openai client itself is built on the first request.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from llm_evo.errors import ConfigError

LADDER: tuple[str, ...] = ("json_schema", "json_object", "text")
# Where LLM-Evo-Merge's `OpenAI(api_key=...)` goes when no URL is given anywhere.
OPENAI_URL = "https://api.openai.com/v1"

Notify = Callable[..., None]


class LLMCallError(Exception):
    """A request that produced no answer; `reason` is a short machine-readable tag
    (unreachable, timeout, rate_limited, server_error, bad_request, format_rejected,
    not_found, auth, http_error, bad_response)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Completion:
    text: str
    mode: str
    finish_reason: str | None


def safe_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from Retry-After-Ms / Retry-After (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(email.utils.mktime_tz(parsed) - time.time(), 0.0)


class ChatClient:
    """Chat completions with the response-format ladder and bounded, reported retries.

    `notify(kind, **payload)` receives llm_backoff / llm_format_rejected /
    llm_response_format events (the strategy forwards them to its event queue).
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        model: str,
        timeout: float = 60.0,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        response_format: str = "auto",
        backoff_retries: int = 4,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        notify: Notify | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if response_format != "auto" and response_format not in LADDER:
            raise ConfigError(
                f"llm.response_format: {response_format!r} is not one of auto, {', '.join(LADDER)}"
            )
        self.model = model
        self.timeout = timeout
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff_retries = backoff_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.notify: Notify = notify or (lambda kind, **payload: None)
        self.sleep = sleep
        self.forced = response_format != "auto"
        # The accepted form, remembered for the run; None until a server has accepted one.
        self.mode: str | None = response_format if self.forced else None
        self._secret = api_key or ""
        # base_url None: OpenAI's own endpoint, as LLM-Evo-Merge's `OpenAI(api_key=...)`
        # with no OPENAI_BASE_URL (the caller has already looked at that variable).
        self.base_url = base_url or OPENAI_URL
        self.url = safe_url(self.base_url)
        self._client: openai.OpenAI | None = None  # built by the first request

    @property
    def openai_client(self) -> openai.OpenAI:
        """The openai client, built on first use so that building us touches nothing."""
        if self._client is None:
            # Local servers ignore the key but the openai client insists on one.
            self._client = openai.OpenAI(api_key=self._secret or "EMPTY",
                                         base_url=self.base_url, timeout=self.timeout,
                                         max_retries=0)
        return self._client

    # ---- redaction --------------------------------------------------------------------------
    def redact(self, text: Any) -> str:
        """`text` as a string with the API key (and URL credentials) removed."""
        out = str(text)
        if self._secret:
            out = out.replace(self._secret, "***")
        if self.base_url != self.url:
            out = out.replace(self.base_url, self.url)
        return out

    # ---- requests ---------------------------------------------------------------------------
    def preflight(self) -> None:
        """One tiny request: 401/403/404 raise ConfigError; other failures LLMCallError."""
        messages = [{"role": "user", "content": "Reply with OK."}]
        try:
            self._create(messages=messages, max_tokens=1)
        except LLMCallError as exc:
            if exc.reason == "auth":
                raise ConfigError(
                    f"llm.base_url: {self.url} refused the API key ({exc.detail}); "
                    "check --api-key or OPENAI_API_KEY"
                ) from None
            if exc.reason == "not_found":
                raise ConfigError(
                    f"llm.model: {self.url} answered 404 for model {self.model!r} "
                    f"({exc.detail}); check the model name and that the URL ends in /v1"
                ) from None
            raise

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        """One answer, trying the response-format ladder until the server accepts a form."""
        modes = [self.mode] if self.mode else list(LADDER)
        for i, mode in enumerate(modes):
            probing = self.mode is None and i + 1 < len(modes)
            try:
                response = self._create(
                    messages=messages,
                    max_tokens=self.max_tokens,
                    temperature=self.temperature,
                    probe=probing,
                    **self._format(mode, schema),
                )
            except LLMCallError as exc:
                if exc.reason in ("bad_request", "format_rejected") and probing:
                    self.notify("llm_format_rejected", mode=mode, error=exc.detail)
                    continue
                raise
            if self.mode != mode:
                self.mode = mode
                self.notify("llm_response_format", mode=mode, rejected=list(modes[:i]))
            try:
                choice = response.choices[0]
                text = choice.message.content or ""
                finish = choice.finish_reason
            except (AttributeError, IndexError, TypeError) as exc:
                raise LLMCallError("bad_response", f"no message in the reply ({exc})") from None
            return Completion(self.redact(text), mode, finish)
        raise LLMCallError("bad_request", "no response format was accepted")  # unreachable

    @staticmethod
    def _format(mode: str, schema: dict[str, Any]) -> dict[str, Any]:
        if mode == "json_schema":
            return {"response_format": {
                "type": "json_schema",
                "json_schema": {"name": "mean_genome", "strict": True, "schema": schema},
            }}
        if mode == "json_object":  # llama.cpp's server form: a schema inside json_object
            return {"response_format": {"type": "json_object", "schema": schema}}
        return {}

    def _create(self, probe: bool = False, **kwargs: Any) -> Any:
        """chat.completions.create with our error mapping and 429/5xx backoff.

        With `probe`, an error that names the response format is a rejection of that form
        even when it is a 5xx: llama-cpp-python's server answers an unknown
        response_format type with HTTP 500, which must not be backed off and retried.
        """
        for attempt in range(self.backoff_retries + 1):
            try:
                return self.openai_client.chat.completions.create(model=self.model, **kwargs)
            except openai.APITimeoutError:
                raise LLMCallError(
                    "timeout", f"no answer from {self.url} within {self.timeout:g}s"
                ) from None
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                raise LLMCallError(
                    "unreachable", self.redact(f"cannot reach {self.url}: {cause}")
                ) from None
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = self.redact(f"HTTP {status}: {_message(exc)}")
                if status in (401, 403):
                    raise LLMCallError("auth", detail) from None
                if status == 404:
                    raise LLMCallError("not_found", detail) from None
                if status in (400, 422):
                    raise LLMCallError("bad_request", detail) from None
                if probe and status != 429 and _names_format(detail):
                    raise LLMCallError("format_rejected", detail) from None
                if status != 429 and status < 500:
                    raise LLMCallError("http_error", detail) from None
                reason = "rate_limited" if status == 429 else "server_error"
                if attempt == self.backoff_retries:
                    raise LLMCallError(
                        reason, f"{detail} (gave up after {attempt + 1} tries)"
                    ) from None
                retry_after = parse_retry_after(getattr(exc.response, "headers", None))
                if retry_after is not None and retry_after > self.backoff_max:
                    raise LLMCallError(
                        reason,
                        f"{detail}; Retry-After {retry_after:g}s exceeds "
                        f"llm.backoff_max {self.backoff_max:g}s",
                    ) from None
                wait = retry_after
                if wait is None:
                    wait = min(self.backoff_base * 2**attempt, self.backoff_max)
                self.notify(
                    "llm_backoff", status=status, wait_s=wait, retry_after=retry_after,
                    try_number=attempt + 1, error=detail,
                )
                self.sleep(wait)
            except openai.OpenAIError as exc:
                raise LLMCallError("bad_response", self.redact(exc)) from None
        raise LLMCallError("server_error", "retries exhausted")  # unreachable


def _names_format(detail: str) -> bool:
    text = detail.lower()
    return any(word in text for word in ("response_format", "json_schema", "json_object"))


def _message(exc: openai.APIStatusError) -> str:
    """The server's error message, short."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(inner, str):
            return inner[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
    return str(exc.message)[:300]
