"""Who may do what: roles for signed-in users, from the ``[access]`` table of the configuration.

Sign-in itself is Streamlit's (``st.login``, OIDC) and lives in the UI; this module only turns an
identity into a role and a role into permissions, so the rules are written once and tested
without a browser. Without sign-in there is one trusted user on the machine: every permission.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pipeline.config import Settings
from pipeline.errors import ConfigError


class Role(IntEnum):
    """Ordered: each role may do what the ones below it may."""

    reviewer = 1  # rate, decide, note, export
    operator = 2  # also launch, cancel and resume runs
    admin = 3  # also see and test the Settings


# What each action needs, and how a refusal names it (the UI asks ``allowed(role, action)``).
NEEDS: dict[str, tuple[Role, str]] = {
    "review": (Role.reviewer, "rate and decide"),
    "export": (Role.reviewer, "export"),
    "launch": (Role.operator, "launch runs"),
    "cancel": (Role.operator, "cancel runs"),
    "resume": (Role.operator, "resume runs"),
    "settings": (Role.admin, "see the Settings"),
}


@dataclass(frozen=True)
class AccessConfig:
    admins: frozenset[str]
    operators: frozenset[str]
    default_role: Role


def _emails(value: object, key: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[access] {key} must be a list of e-mail addresses, like [\"ana@studio.example\"]")
    return frozenset(v.strip().casefold() for v in value if v.strip())


def access_config(settings: Settings) -> AccessConfig:
    table = settings.section("access")
    default = table.get("default_role", "reviewer")
    if default not in Role.__members__:
        raise ConfigError(f"[access] default_role = {default!r} is not a role; use one of {', '.join(Role.__members__)}")
    return AccessConfig(admins=_emails(table.get("admins", []), "admins"), operators=_emails(table.get("operators", []), "operators"),
                        default_role=Role[default])


def role_for(config: AccessConfig, email: str) -> Role:
    """The role of a signed-in user, by e-mail address (an admin listed as operator too is admin)."""
    who = email.strip().casefold()
    if who and who in config.admins:
        return Role.admin
    if who and who in config.operators:
        return Role.operator
    return config.default_role


def allowed(role: Role, action: str) -> bool:
    """Whether ``role`` may do ``action`` (one of :data:`NEEDS`)."""
    return role >= NEEDS[action][0]


def refusal(role: Role, action: str) -> str:
    """The message shown beside a control the role may not use."""
    needed, what = NEEDS[action]
    who = "admins" if needed is Role.admin else f"{needed.name}s and admins"
    article = "an" if role.name[0] in "aeiou" else "a"
    return f"Only {who} may {what}; you are signed in as {article} {role.name}."
