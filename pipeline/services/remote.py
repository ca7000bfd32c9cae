"""The base of every networked component: its key, base URL, model and timeout, and its
**Test connection** probe. The request plumbing is :mod:`pipeline.services.wire`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.errors import ProviderError
from pipeline.services.wire import DEFAULT_TIMEOUT_S, _snippet, client, require, safe_url, send, setting


@dataclass(frozen=True)
class Probe:
    ok: bool
    message: str


class Probing:
    """The Settings page's **Test connection**: one cheap, unbilled request that shows whether the
    service answers and accepts the key. Subclasses name the request; statuses in ``probe_ok``
    mean the key was accepted (some services answer 404 for the dummy id they are asked about)."""

    probe_ok: frozenset[int] = frozenset({200})

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        raise NotImplementedError

    def key_refused(self, response: httpx.Response) -> bool:
        return response.status_code in (401, 403)

    async def probe(self) -> Probe:
        method, url, kwargs = self.probe_request()
        try:
            async with client(headers=kwargs.pop("headers", {}), timeout_s=10.0) as http:
                response = await send(http, self.name, method, url, **kwargs)  # type: ignore[attr-defined]
        except ProviderError as e:
            return Probe(False, str(e))
        code = response.status_code
        if code in self.probe_ok:
            return Probe(True, f"{safe_url(url)} answered HTTP {code}: reachable, key accepted")
        if self.key_refused(response):
            return Probe(False, f"{safe_url(url)} refused the key (HTTP {code})")
        return Probe(False, f"{safe_url(url)} answered HTTP {code}: {_snippet(response.text, 160)}")


class Remote(Probing):
    """Mixin for networked components: key, base URL, model and timeout from environment and configuration.

    The key lives only on the instance (``self._key``); it is never put in ``settings``,
    messages or the database.
    """

    name: str
    key_env_var: str | None
    base_url_env_var: str | None
    default_base_url: str
    model_env_var: str | None
    settings: dict[str, Any]
    model: str

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)  # type: ignore[call-arg]  (Component.__init__, next in the MRO)
        self._configure()

    def _configure(self) -> None:
        self._key = require(self.key_env_var, self.name) if self.key_env_var else ""
        self.base_url = setting(self.base_url_env_var, self.settings, "base_url", self.default_base_url).rstrip("/")
        self.model = setting(self.model_env_var, self.settings, "model")
        self.timeout_s = float(self.settings.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.poll_initial_s = float(self.settings.get("poll_initial_s", 0.5))  # for services answered by polling
        self.poll_max_s = float(self.settings.get("poll_max_s", 2.0))

    def _token_cost(self, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """Cost from the service's own token counts at the model's configured per-million rates
        (``[<kind>.<name>.token_prices]``); None when there are no rates or no counts."""
        rates = dict(self.settings.get("token_prices", {}).get(self.model, {}))
        if not rates or (input_tokens is None and output_tokens is None):
            return None
        return ((input_tokens or 0) * float(rates.get("input_per_million", 0))
                + (output_tokens or 0) * float(rates.get("output_per_million", 0))) / 1e6
