"""Which providers can serve a prompt, from their capability tables: the launch check and routing.

A prompt with reference images goes only to a provider that takes that many, in those roles
(a mask needs ``mask``); a prompt with ``size: "auto"`` only to one whose sizes include
``auto``. Routing skips any other provider with the reason (:func:`refusal`); before launch, a
prompt that no provider of the chain can serve, and ``auto`` on a provider without it, are
problems with their JSON paths (:func:`check_prompt_set`), so nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import registry
from pipeline.components import Component
from pipeline.config import Settings
from pipeline.errors import Problem, PromptSetInvalid
from pipeline.prompts.promptset import AUTO_SIZE, PromptSetSpec, PromptSpec, template_problems
from pipeline.runs.records import RunConfig
from pipeline.services.capabilities import Capabilities, capabilities_for


def component_capabilities(component: Component) -> Capabilities:
    return capabilities_for(component.settings, component.model, f"{component.kind}.{component.name}")


def provider_capabilities(settings: Settings, name: str) -> Capabilities:
    """A chain member's capabilities, for the model the run will use (its instance applies any override)."""
    return component_capabilities(registry.providers.create(name, settings))


def refusal(caps: Capabilities, roles: Sequence[str], size: str | None) -> str:
    """Why a provider with ``caps`` cannot serve references in ``roles`` at ``size`` ("" = it can)."""
    why = caps.takes_references(len(roles), tuple(roles)) if roles else ""
    if not why and size == AUTO_SIZE and not caps.takes_size(AUTO_SIZE):
        why = f'does not take size "auto" (its sizes: {", ".join(caps.sizes)})'
    return why


def _prompt_problems(p: PromptSpec, chain: dict[str, Capabilities], default_size: str) -> list[Problem]:
    problems: list[Problem] = []
    roles = [r.role for r in p.all_references()]
    if roles:
        reasons = {name: caps.takes_references(len(roles), tuple(roles)) for name, caps in chain.items()}
        if all(reasons.values()):
            why = "; ".join(f"{name} {reason}" for name, reason in reasons.items())
            problems.append(Problem(f"{p.where}.reference_images",
                                    f"{len(roles)} reference image(s) ({', '.join(sorted(set(roles)))}, its characters' included) "
                                    f"that no provider in the chain can take: {why}. Add a provider that takes references "
                                    "(see the capability tables in the README)"))
    if (p.size or default_size).strip().lower() == AUTO_SIZE:
        where = f"{p.where}.size" if p.size else f"{p.where}.size ([prompt] default_size)"
        for name, caps in chain.items():
            if not caps.takes_size(AUTO_SIZE):
                problems.append(Problem(where, f'"auto" is not a size {name} takes (its sizes: {", ".join(caps.sizes)}); '
                                                           f'give a size such as "1024x1024", or take {name} out of the chain'))
    return problems


def check_prompt_set(settings: Settings, spec: PromptSetSpec, config: RunConfig) -> None:
    """Every prompt of ``spec`` can be composed and served by ``config``'s provider chain."""
    problems: list[Problem] = []
    if not spec.template:
        problems.extend(template_problems(settings.prompt.template, spec.prompts, "[prompt] template (settings)"))
    chain = {name: provider_capabilities(settings, name) for name in config.providers}
    for p in spec.prompts:
        problems.extend(_prompt_problems(p, chain, settings.prompt.default_size))
    if problems:
        raise PromptSetInvalid(problems, spec.source)
