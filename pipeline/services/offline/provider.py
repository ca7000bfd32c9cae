"""The offline provider: renders a deterministic image locally, no network, no key, no cost."""

from __future__ import annotations

import asyncio

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider


class OfflineProvider(ImageProvider):
    name = "offline"
    label = "offline: local renderer, no network"
    offline = True

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        # The renderer (numpy, PIL) is loaded by the first image, not by registering the provider (every page, at start-up).
        from pipeline.services.offline.grid import render_grid, wants_grid
        from pipeline.services.offline.references import apply_references
        from pipeline.services.offline.render import render

        fmt = str(self.settings.get("format", "JPEG"))
        quality = int(self.settings.get("quality", 90))
        if wants_grid(request.prompt):  # a 2x2 grid asked for in the prompt (grid mode): four renders, references in each
            data = await asyncio.to_thread(render_grid, request.prompt, seed=request.seed, width=request.width, height=request.height,
                                           fmt=fmt, quality=quality, references=request.reference_images)
            return GeneratedImage(data=data, model=self.model, cost_usd=float(self.settings.get("price_per_image", 0.0)))
        data = await asyncio.to_thread(
            render, request.prompt, seed=request.seed, width=request.width, height=request.height, fmt=fmt, quality=quality,
        )
        if request.reference_images:
            data = await asyncio.to_thread(apply_references, data, request.reference_images, fmt=fmt, quality=quality)
        return GeneratedImage(data=data, model=self.model, cost_usd=float(self.settings.get("price_per_image", 0.0)))
