"""Built-in image providers, registered by name."""

from ..registry import providers
from .cloudflare import CloudflareProvider
from .fal import FalProvider
from .gemini import GeminiImageProvider
from .offline import OfflineProvider
from .openai_images import OpenAIImagesProvider
from .worker import WorkerProvider

providers.register(OfflineProvider)
providers.register(FalProvider)
providers.register(CloudflareProvider)
providers.register(WorkerProvider)
providers.register(OpenAIImagesProvider)
providers.register(GeminiImageProvider)
