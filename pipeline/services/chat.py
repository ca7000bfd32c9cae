"""Judges and refiners that ask a chat model for schema-constrained JSON, whatever the service.

A service contributes one method, :meth:`ChatService.ask` (system text, user text, JSON schema,
optionally an image → the answer's text, model and cost). :class:`ChatJudge` and
:class:`ChatRefiner` turn that into DSG/TIFA judging and refinement with :mod:`pipeline.services.rubric`,
so the Gemini, OpenAI and Ollama judges differ only in their transport. Temperature is 0.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from pipeline.components import Decomposition, EvaluationRequest, Judge, Judgement, RefinedPrompt, RefinementRequest, Refiner
from pipeline.services import rubric
from pipeline.services.remote import Remote


@dataclass(frozen=True)
class Answer:
    text: str
    model: str
    cost_usd: float | None = None


class ChatService(Remote):
    @abstractmethod
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, image: bytes | None = None,
                  mime_type: str = "") -> Answer: ...


class ChatJudge(ChatService, Judge):
    remote_decompose = True

    async def decompose(self, prompt: str) -> Decomposition:
        answer = await self.ask(rubric.DECOMPOSE_SYSTEM, rubric.decompose_text(prompt), rubric.ELEMENTS_SCHEMA)
        return Decomposition(rubric.parse_elements(self.name, answer.text), model=answer.model, cost_usd=answer.cost_usd)

    async def evaluate(self, request: EvaluationRequest) -> Judgement:
        answer = await self.ask(rubric.JUDGE_SYSTEM, rubric.judge_text(request), rubric.JUDGEMENT_SCHEMA,
                                image=request.image, mime_type=request.mime_type)
        return rubric.parse_judgement(self.name, answer.text, request, model=answer.model, raw=answer.text, cost_usd=answer.cost_usd)


class ChatRefiner(ChatService, Refiner):
    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        system = rubric.REFINE_SYSTEM.format(max_words=int(self.settings.get("max_words", 120)))
        answer = await self.ask(system, rubric.refine_text(request), rubric.REFINEMENT_SCHEMA)
        return rubric.parse_refinement(self.name, answer.text, model=answer.model, cost_usd=answer.cost_usd)
