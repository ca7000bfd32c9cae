"""The built-in services, one module per vendor, each holding its provider, judge and refiner.

Importing this package registers them by name (:mod:`pipeline.registry`); a plugin module named
in ``DARKROOM_PLUGINS`` registers its own the same way.
"""

from pipeline.registry import judges, providers, refiners
from pipeline.services.cloudflare import CloudflareProvider
from pipeline.services.comfyui import ComfyUIProvider
from pipeline.services.fal import FalProvider
from pipeline.services.gemini import GeminiImageProvider, GeminiJudge, GeminiRefiner
from pipeline.services.leonardo import LeonardoProvider
from pipeline.services.offline import OfflineJudge, OfflineProvider, OfflineRefiner
from pipeline.services.ollama import OllamaJudge, OllamaRefiner
from pipeline.services.openai import OpenAIImagesProvider, OpenAIJudge, OpenAIRefiner
from pipeline.services.runware import RunwareProvider
from pipeline.services.worker import WorkerProvider

for provider in (OfflineProvider, FalProvider, OpenAIImagesProvider, GeminiImageProvider, LeonardoProvider, RunwareProvider,
                 ComfyUIProvider, CloudflareProvider, WorkerProvider):
    providers.register(provider)
for judge in (OfflineJudge, GeminiJudge, OpenAIJudge, OllamaJudge):
    judges.register(judge)
for refiner in (OfflineRefiner, GeminiRefiner, OpenAIRefiner, OllamaRefiner):
    refiners.register(refiner)
