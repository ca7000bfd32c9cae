"""The offline provider: renders a deterministic image locally, no network, no key, no cost."""

from __future__ import annotations

import asyncio

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.services.offline.render import render


class OfflineProvider(ImageProvider):
    name = "offline"
    label = "offline: local renderer, no network"
    offline = True

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        fmt = str(self.settings.get("format", "JPEG"))
        data = await asyncio.to_thread(
            render, request.prompt, seed=request.seed, width=request.width, height=request.height,
            fmt=fmt, quality=int(self.settings.get("quality", 90)),
        )
        return GeneratedImage(data=data, model=self.model, cost_usd=float(self.settings.get("price_per_image", 0.0)))
