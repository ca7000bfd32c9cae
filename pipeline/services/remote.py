"""The base of every networked component: its key, base URL, model and timeout, and its
**Test connection** probe. The request plumbing is :mod:`pipeline.services.wire`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx

from pipeline.components import service_done
from pipeline.errors import ProviderError
from pipeline.services.ahead import SubmitAhead
from pipeline.services.polling import LatencyModel, PollCounts, poll_by_expectation
from pipeline.services.wire import (
    DEFAULT_TIMEOUT_S,
    BodyCap,
    Guard,
    NetworkSettings,
    _snippet,
    client,
    origin,
    require,
    safe_url,
    send,
    setting,
)

PROBE_TIMEOUT_S = 10.0  # the whole Test connection request, body included
T = TypeVar("T")


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

    def model_missing(self, response: httpx.Response) -> str | None:
        """Why the configured model cannot be used, when the probe's answer lists what the service
        has (a run would otherwise fail later with 404); None when it is there or cannot be told."""
        return None

    def probe_guard(self) -> Guard | None:
        return None

    async def probe(self) -> Probe:
        method, url, kwargs = self.probe_request()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):  # a service that trickles its answer is bounded too
                async with client(headers=kwargs.pop("headers", {}), timeout_s=PROBE_TIMEOUT_S, guard=self.probe_guard()) as http:
                    response = await send(http, self.name, method, url, **kwargs)  # type: ignore[attr-defined]
        except ProviderError as e:
            return Probe(False, str(e))
        except TimeoutError:
            return Probe(False, f"{safe_url(url)} did not answer completely within {PROBE_TIMEOUT_S:g} s")
        code = response.status_code
        if code in self.probe_ok:
            missing = self.model_missing(response) if code == 200 else None
            if missing:
                return Probe(False, f"{safe_url(url)} answered HTTP {code}: reachable, but {missing}")
            return Probe(True, f"{safe_url(url)} answered HTTP {code}: reachable, key accepted")
        if self.key_refused(response):
            return Probe(False, f"{safe_url(url)} refused the key (HTTP {code})")
        return Probe(False, f"{safe_url(url)} answered HTTP {code}: {_snippet(response.text, 160)}")


class Remote(Probing):
    """Mixin for networked components: key, base URL, model and timeout from environment and configuration.

    The key lives only on the instance (``self._key``); it is never put in ``settings``,
    messages or the database.
    """

    name: ClassVar[str]
    key_env_var: ClassVar[str | None]
    base_url_env_var: ClassVar[str | None]
    default_base_url: ClassVar[str]
    model_env_var: ClassVar[str | None]
    settings: dict[str, Any]
    model: str

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)  # type: ignore[call-arg]  # Component.__init__, next in the MRO
        self._configure()

    def _configure(self) -> None:
        self._key = require(self.key_env_var, self.name) if self.key_env_var else ""
        self.base_url = setting(self.base_url_env_var, self.settings, "base_url", self.default_base_url).rstrip("/")
        self.model = setting(self.model_env_var, self.settings, "model")
        self.timeout_s = float(self.settings.get("timeout_s", DEFAULT_TIMEOUT_S))
        self.poll_initial_s = float(self.settings.get("poll_initial_s", 0.5))  # for services answered by polling
        self.poll_max_s = float(self.settings.get("poll_max_s", 2.0))
        self.network = NetworkSettings.from_settings(self.settings)  # [network] under the service's own table (registry)
        self.latencies = LatencyModel()  # this service's job times, learnt while polling (pipeline.services.polling)
        self.poll_counts = PollCounts()
        self.ahead = SubmitAhead(self.name, int(self.settings.get("submit_ahead", 0)),  # used by services that queue (fal)
                                 float(self.settings.get("submit_ahead_per_slot", 0.0)))
        self._guards: dict[tuple[str, NetworkSettings, BodyCap | None], Guard] = {}  # made by guard()

    def ahead_slots(self, max_concurrency: int) -> int:
        """Calls beyond ``max_concurrency`` the rate limiter may start (submitting ahead; 0 for most services)."""
        return self.ahead.slots(max_concurrency)

    async def poll(self, check: Callable[[], Awaitable[T | None]], *, deadline: float, timed_out: Callable[[], ProviderError],
                   since: float | None = None) -> T:
        """Poll a submitted job with ``check`` until it answers something: at the times this
        service's recent jobs suggest (polling by expectation), counted in ``poll_counts``."""
        done = await poll_by_expectation(check, self.latencies, self.poll_counts, since=time.monotonic() if since is None else since,
                                       deadline=deadline, initial_s=self.poll_initial_s, max_s=self.poll_max_s, timed_out=timed_out)
        service_done()  # the job is done there: the next may be submitted while its result is fetched
        return done

    def guard(self, cap: BodyCap | None = None) -> Guard:
        """Body cap (default: JSON) and credentials policy for this service's clients: keys go to its
        base URL's origin and its ``trusted_hosts`` only. Kept per (base URL, network settings, cap):
        a client is made per call, and parsing the URLs each time cost ~0.1 ms."""
        key = (self.base_url, self.network, cap)
        made = self._guards.get(key)
        if made is None:
            base = self.base_url if "://" in self.base_url or not self.base_url else f"http://{self.base_url}"  # OLLAMA_HOST may be host:port
            own = {origin(base)} if base else set()
            own |= {origin(h if "://" in h else f"https://{h}") for h in self.network.trusted_hosts}
            made = self._guards[key] = Guard(self.name, cap or self.network.json, frozenset(own) if own else None, self.network.foreign_downloads)
        return made

    def probe_guard(self) -> Guard | None:
        return self.guard()

    def client(self, *, headers: dict[str, str] | None = None, cap: BodyCap | None = None) -> httpx.AsyncClient:
        """A client for one call, with this service's timeout and guard; its connections come from
        the service's pool for the run (:func:`pipeline.services.pools.shared_connections`)."""
        return client(headers=headers, timeout_s=self.timeout_s, guard=self.guard(cap), share=True)

    def _token_cost(self, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """Cost from the service's own token counts at the model's configured per-million rates
        (``[<kind>.<name>.token_prices]``); None when there are no rates or no counts."""
        rates = dict(self.settings.get("token_prices", {}).get(self.model, {}))
        if not rates or (input_tokens is None and output_tokens is None):
            return None
        return ((input_tokens or 0) * float(rates.get("input_per_million", 0))
                + (output_tokens or 0) * float(rates.get("output_per_million", 0))) / 1e6
