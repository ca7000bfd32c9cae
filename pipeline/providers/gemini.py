"""Gemini image models through google-genai ``generate_content`` with an image response modality.

The requested size becomes the nearest supported aspect ratio; a 200 answer with a block reason,
or a safety finish reason and no image, is a content block; a 200 with no image otherwise is a
malformed answer. Cost comes from the usage metadata's tokens at the configured rates.
"""

from __future__ import annotations

from google.genai import types

from ..components import GeneratedImage, GenerationRequest, ImageProvider
from ..errors import ContentBlocked, ProviderError
from ..gemini import BLOCK_FINISH, GeminiService

ASPECT_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"]


def nearest_aspect_ratio(width: int, height: int) -> str:
    def ratio(r: str) -> float:
        w, h = (int(x) for x in r.split(":"))
        return w / h
    return min(ASPECT_RATIOS, key=lambda r: abs(ratio(r) - width / height))


class GeminiImageProvider(GeminiService, ImageProvider):
    label = "Gemini image model"
    model_env_var = "GEMINI_IMAGE_MODEL"

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        aspect = nearest_aspect_ratio(request.width, request.height)
        response = await self._generate([request.prompt], types.GenerateContentConfig(
            response_modalities=["IMAGE"], seed=request.seed,
            image_config=types.ImageConfig(aspect_ratio=aspect, image_size=str(self.settings.get("image_size", "1K")))))
        self._check_blocked(response)
        candidates = getattr(response, "candidates", None) or []
        parts = (candidates[0].content.parts or []) if candidates and candidates[0].content else []
        image = next((p.inline_data for p in parts if getattr(p, "inline_data", None) and p.inline_data.data), None)
        finish = getattr(candidates[0], "finish_reason", None) if candidates else None
        finish_name = str(getattr(finish, "value", finish) or "")
        if image is None:
            if finish_name in BLOCK_FINISH:
                raise ContentBlocked(f"{self.name} refused to draw the prompt (finishReason {finish_name})", http_status=200)
            raise ProviderError(f"{self.name} answered without an image (finishReason {finish_name or 'none'})", kind="malformed",
                                http_status=200, retryable=True)
        return GeneratedImage(data=image.data, mime_type=image.mime_type, model=self.model, http_status=200,
                              cost_usd=self._usage_cost(response), metadata={"aspect_ratio": aspect})
