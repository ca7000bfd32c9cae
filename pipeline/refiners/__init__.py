"""Built-in refiners, registered by name."""

from ..gemini import GeminiRefiner
from ..openai_chat import OllamaRefiner, OpenAIRefiner
from ..registry import refiners
from .offline import OfflineRefiner

refiners.register(OfflineRefiner)
refiners.register(GeminiRefiner)
refiners.register(OpenAIRefiner)
refiners.register(OllamaRefiner)
