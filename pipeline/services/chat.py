"""Judges and refiners that ask a chat model for schema-constrained JSON, whatever the service.

A service contributes one method, :meth:`ChatService.ask` (system text, user text, JSON schema,
optionally images → the answer's text, model and cost). :class:`ChatJudge` and
:class:`ChatRefiner` turn that into DSG/TIFA judging and refinement with :mod:`pipeline.services.rubric`,
so the Gemini, OpenAI and Ollama judges differ only in their transport. Temperature is 0.

The judge shows the model the generated image first and then the prompt's subject and character
references (:mod:`pipeline.services.judge_images`: bounded by ``max_reference_images``,
``reference_max_side`` and ``reference_max_bytes``), and the text says which image is which.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.components import Decomposition, EvaluationRequest, Judge, Judgement, RefinedPrompt, RefinementRequest, Refiner
from pipeline.services import judge_images, rubric
from pipeline.services.judge_images import Picture
from pipeline.services.remote import Remote

log = logging.getLogger("pipeline.services.chat")


@dataclass(frozen=True)
class Answer:
    text: str
    model: str
    cost_usd: float | None = None


class ChatService(Remote):
    @abstractmethod
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, images: Sequence[Picture] = ()) -> Answer:
        """The model's answer to ``text`` constrained by ``schema``; ``images`` go with the text, in order."""


class ChatJudge(ChatService, Judge):
    remote_decompose = True

    async def decompose(self, prompt: str) -> Decomposition:
        answer = await self.ask(rubric.DECOMPOSE_SYSTEM, rubric.decompose_text(prompt), rubric.ELEMENTS_SCHEMA)
        return Decomposition(rubric.parse_elements(self.name, answer.text), model=answer.model, cost_usd=answer.cost_usd)

    async def evaluate(self, request: EvaluationRequest) -> Judgement:
        limits = judge_images.ReferenceLimits.from_settings(self.settings)
        refs = await asyncio.to_thread(judge_images.shown, request.reference_images, limits) if request.reference_images else None
        text = rubric.judge_text(request)
        pictures = [Picture(request.image, request.mime_type or "image/png")]
        if refs is not None:
            if refs.left_out:
                log.warning("%s judge: %d of %d reference images left out: %s", self.name, len(refs.left_out),
                            len(request.reference_images), "; ".join(refs.left_out))
            pictures += refs.pictures
            subjects = judge_images.subjects_asked(request.elements)
            text = f"{judge_images.label(refs.names, subjects)}\n\n{text}" if refs.pictures else text
        answer = await self.ask(rubric.JUDGE_SYSTEM, text, rubric.JUDGEMENT_SCHEMA, images=pictures)
        return rubric.parse_judgement(self.name, answer.text, request, model=answer.model, raw=answer.text, cost_usd=answer.cost_usd)


class ChatRefiner(ChatService, Refiner):
    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        system = rubric.REFINE_SYSTEM.format(max_words=int(self.settings.get("max_words", 120)))
        answer = await self.ask(system, rubric.refine_text(request), rubric.REFINEMENT_SCHEMA)
        return rubric.parse_refinement(self.name, answer.text, model=answer.model, cost_usd=answer.cost_usd)
