"""Built-in judges, registered by name."""

from ..gemini import GeminiJudge
from ..openai_chat import OllamaJudge, OpenAIJudge
from ..registry import judges
from .offline import OfflineJudge

judges.register(OfflineJudge)
judges.register(GeminiJudge)
judges.register(OpenAIJudge)
judges.register(OllamaJudge)
