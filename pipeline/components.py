"""The contracts every provider, judge and refiner fulfils, and the shapes they exchange.

One class per service, one async method each (judges may also override ``decompose``):

- :class:`ImageProvider` ``generate(GenerationRequest) -> GeneratedImage`` (several images of one
  call, ``request.n`` > 1, come as the first plus ``GeneratedImage.extra``)
- :class:`Judge` ``evaluate(EvaluationRequest) -> Judgement``
- :class:`Refiner` ``refine(RefinementRequest) -> RefinedPrompt``

Whatever a service's wire format, it answers in these shapes and fails with
:class:`~pipeline.errors.ProviderError` (a content-policy refusal is always
:class:`~pipeline.errors.ContentBlocked`), so the runner never knows which service it talks to.
The overall score is not part of a :class:`Judgement`: ``scoring.py`` computes it from the answers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Answer = Literal["yes", "no", "unsure"]
_service_done: ContextVar[Callable[[], None] | None] = ContextVar("darkroom_service_done", default=None)


def service_done() -> None:
    """A provider says the service has finished the job (its slot there is free) and only the
    result is left to fetch. The caller's concurrency slot (pipeline.resilience.limits) is given
    back now, so the next job is submitted while this one's result and image are downloaded: a
    service that answers 429 beyond its slots otherwise sat idle for those round trips."""
    done = _service_done.get()
    if done is not None:
        done()


@contextmanager
def when_service_done(callback: Callable[[], None]) -> Iterator[None]:
    """Within this block (the same task), :func:`service_done` calls ``callback``."""
    token = _service_done.set(callback)
    try:
        yield
    finally:
        _service_done.reset(token)


class Component(ABC):
    """What providers, judges and refiners share: a registry name, a label and their settings."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "providers" | "judges" | "refiners": the configuration table they read
    label: ClassVar[str] = ""  # shown wherever the component appears; offline ones say so
    offline: ClassVar[bool] = False
    key_env_var: ClassVar[str | None] = None  # the secret it needs; its value is never logged or stored
    base_url_env_var: ClassVar[str | None] = None  # override for proxies, self-hosting and tests
    default_base_url: ClassVar[str] = ""
    required_env_vars: ClassVar[tuple[str, ...]] = ()  # other settings it cannot work without
    model_env_var: ClassVar[str | None] = None  # overrides the configured model

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})
        self.model: str = str(self.settings.get("model", ""))

    @classmethod
    def display_name(cls) -> str:
        return f"{cls.name} ({cls.label})" if cls.label else cls.name


# ---- Generation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Submission:
    """A job an asynchronous service (a queue, a poll-by-id API) accepted: enough to find it again."""

    service: str  # the provider's registry name
    request_id: str  # the service's own id for the job
    meta: dict[str, Any] = field(default_factory=dict)  # what polling it needs besides the id (status/result URLs)


REFERENCE_ROLES = ("subject", "style", "composition", "mask")  # what a reference image is for


@dataclass(frozen=True)
class ReferenceImage:
    """An image sent with a prompt: a subject or character to keep, a style or composition to
    follow, or a mask (the area an edit may change). ``name`` is where it came from in the prompt
    set (a bundle path), for messages; the bytes were checked as an image when the set was read."""

    data: bytes
    mime_type: str
    role: str = "subject"  # one of capabilities.ROLES: subject, style, composition, mask
    name: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Asynchronous providers also honour the last two fields:

    - ``on_submitted`` is called with the :class:`Submission` as soon as the service accepted the
      job and before waiting on it (the pipeline records it, so a crash cannot lose it);
    - ``resume`` is a job submitted before a crash: poll it first, and submit anew only if the
      service says it is gone, failed or expired.
    """

    prompt: str
    width: int
    height: int
    seed: int
    negative_prompt: str = ""
    prompt_id: str = ""
    # Images sent with the prompt (edit / reference / image-to-image), mask included; a provider
    # takes only what its capability table says (routing skips it otherwise).
    reference_images: tuple[ReferenceImage, ...] = ()
    n: int = 1  # images wanted from this one call (<= the provider's max_n)
    # size "auto": the service chooses (only a provider whose sizes include "auto" is asked);
    # width and height then hold the run's default size, for services and judges that need one.
    auto_size: bool = False
    on_submitted: Callable[[Submission], None] | None = field(default=None, compare=False, repr=False)
    resume: Submission | None = None

    def submitted(self, submission: Submission) -> None:
        """For providers: report the accepted job (a no-op when nobody asked)."""
        if self.on_submitted is not None:
            self.on_submitted(submission)

    def resumable(self, service: str) -> Submission | None:
        """For providers: the job to poll first, when it was submitted to ``service``."""
        return self.resume if self.resume is not None and self.resume.service == service else None


@dataclass
class GeneratedImage:
    data: bytes
    mime_type: str | None = None  # what the service claimed; checked against the bytes
    model: str = ""
    cost_usd: float | None = None  # the service's own figure; None -> the price table
    http_status: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the service's own (seed, timings, credits…), kept per iteration
    request_id: str = ""  # the service's id for this generation
    source_url: str = ""  # where the image was downloaded from ("" when the bytes came inline)
    # The other images of the same call when ``GenerationRequest.n`` > 1 (empty for n = 1), in
    # the service's order; each is stored as an image of its own. With several images, each one's
    # ``cost_usd`` is its share of the call (a per-call figure is split evenly).
    extra: list[GeneratedImage] = field(default_factory=list)

    def images(self) -> list[GeneratedImage]:
        """Every image of the call: this one, then ``extra``."""
        return [self, *self.extra]


class ImageProvider(Component):
    kind = "providers"

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GeneratedImage: ...


# ---- Judging -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Element:
    """An atomic yes/no requirement of the original prompt (DSG): 'yes' means satisfied."""

    number: int
    category: str  # entity | attribute | count | relation_spatial | relation_action | text_rendering | style | global | negation
    question: str
    tuple_text: str = ""
    parent_numbers: tuple[int, ...] = ()
    critical: bool = True


@dataclass(frozen=True)
class Check:
    element: int
    question: str
    answer: Answer
    evidence: str = ""


@dataclass(frozen=True)
class Issue:
    kind: str  # a criterion name ("sharpness"), "element", or a service's own word
    description: str
    suggestion: str  # a concrete prompt change
    severity: float = 0.5  # 0–1, the judge's ranking of what to fix first
    element: int | None = None


@dataclass
class Judgement:
    criteria: dict[str, float | None]  # each 0–10; None = not applicable
    checks: list[Check] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    model: str = ""
    raw_response: str = ""
    cost_usd: float | None = None

    @property
    def top_issue(self) -> Issue | None:
        return max(self.issues, key=lambda i: i.severity) if self.issues else None


@dataclass
class Decomposition:
    """Stage A of a judge: the original prompt's elements, and what the call cost."""

    elements: list[Element]
    model: str = ""
    cost_usd: float | None = None


@dataclass(frozen=True)
class EvaluationRequest:
    original_prompt: str  # scores are always against the original, so iterations compare fairly
    sent_prompt: str
    elements: tuple[Element, ...]
    image: bytes
    mime_type: str
    requested_width: int
    requested_height: int
    # The prompt's subject and character references: a "reference" element asks whether the image
    # shows the same subject or character (vision judges look at them; the offline one compares colours).
    reference_images: tuple[ReferenceImage, ...] = ()


class Judge(Component):
    kind = "judges"

    remote_decompose: ClassVar[bool] = False  # True when decompose calls a service (it is then logged and priced)

    @abstractmethod
    async def decompose(self, prompt: str) -> Decomposition:
        """Split the original prompt into elements, once per prompt (vision judges ask a model;
        the offline judge reads the visual properties the lexicon knows)."""

    @abstractmethod
    async def evaluate(self, request: EvaluationRequest) -> Judgement: ...


# ---- Refining ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefinementRequest:
    original_prompt: str
    current_prompt: str
    judgement: Judgement
    failed_checks: tuple[Check, ...]
    history: tuple[tuple[str, float], ...]  # (prompt, overall score) of earlier iterations
    purpose: Literal["improve", "comply"] = "improve"  # "comply": a provider blocked the prompt; rewrite it to pass


@dataclass
class RefinedPrompt:
    prompt: str
    rationale: str
    edits: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    cost_usd: float | None = None


class Refiner(Component):
    kind = "refiners"

    @abstractmethod
    async def refine(self, request: RefinementRequest) -> RefinedPrompt: ...
