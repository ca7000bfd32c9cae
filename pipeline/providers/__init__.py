"""Built-in image providers, registered by name."""

from ..registry import providers
from .cloudflare import CloudflareProvider
from .comfyui import ComfyUIProvider
from .fal import FalProvider
from .gemini import GeminiImageProvider
from .leonardo import LeonardoProvider
from .offline import OfflineProvider
from .openai_images import OpenAIImagesProvider
from .runware import RunwareProvider
from .worker import WorkerProvider

for provider in (OfflineProvider, FalProvider, OpenAIImagesProvider, GeminiImageProvider, LeonardoProvider, RunwareProvider,
                 ComfyUIProvider, CloudflareProvider, WorkerProvider):
    providers.register(provider)
