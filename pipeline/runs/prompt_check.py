"""Checking a prompt set against the chosen providers' windows before a run (CLI, New run, API).

After the template is applied, each prompt is measured against each provider of the chain: over
a provider's hard maximum it is refused (with its JSON path and the limit) and nothing is
written; over a provider's window it is marked for compression for that provider. The same
analysis (complexity, readability, keywords, flags) backs ``python -m pipeline check``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pipeline.config import Settings
from pipeline.errors import Problem, PromptSetInvalid
from pipeline.prompts.analysis import PromptAnalysis, ToolLimits, analyse, analyse_set, errors
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.prompts.windows import Window
from pipeline.services.prompt_tools import windows_for

__all__ = ["analyse_prompts", "check_prompt_set", "check_rewrite", "option_problems", "tool_limits"]


def tool_limits(settings: Settings) -> ToolLimits:
    return ToolLimits.from_table(settings.section("prompt_tools"))


def analyse_prompts(settings: Settings, spec: PromptSetSpec, providers: Sequence[str]) -> list[PromptAnalysis]:
    """Every prompt of ``spec`` as sent (template applied), against every provider in ``providers``."""
    return analyse_set(spec, windows_for(settings, providers), settings.prompt.template, tool_limits(settings))


def option_problems(spec: PromptSetSpec) -> list[Problem]:
    """The prompt tools' own keys in a prompt: ``enhance`` is true or false."""
    return [Problem(f"prompts[{i}].enhance", f"expected true or false, got {json.dumps(p.metadata['enhance'])[:40]}")
            for i, p in enumerate(spec.prompts) if "enhance" in p.metadata and not isinstance(p.metadata["enhance"], bool)]


def check_prompt_set(settings: Settings, spec: PromptSetSpec, providers: Sequence[str]) -> list[PromptAnalysis]:
    """:func:`analyse_prompts`, raising :class:`PromptSetInvalid` (every error with its JSON path)
    when a prompt is over a provider's hard maximum. Returns the analyses (warnings included)."""
    analyses = analyse_prompts(settings, spec, providers)
    problems = option_problems(spec) + [Problem(f.path, f"{f.message}; {f.fix}") for f in errors(analyses)]
    if problems:
        raise PromptSetInvalid(problems, spec.source)
    return analyses


def check_rewrite(text: str, windows: Sequence[Window], *, path: str, what: str) -> tuple[list[str], list[str]]:
    """A rewritten prompt (refined, enhanced) checked again: (errors, providers to compress for),
    so a rewrite never silently outgrows a window."""
    analysis = analyse(text, windows, path=path)
    errs = [f"the {what} prompt is {f.message}" for f in analysis.flags if f.level == "error"]
    return errs, list(analysis.compress_for)
