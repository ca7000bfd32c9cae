"""Sign-in (Streamlit's st.login, OpenID Connect) and roles.

The roles' rules are tested directly; sign-in itself runs end to end: ``streamlit run app.py``
with an ``[auth]`` secrets file pointing at an OpenID Connect provider emulated on loopback
(tests/emulators/oidc.py), driven in Chromium through the real redirects.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.access import AccessConfig, Role, access_config, allowed, refusal, role_for
from pipeline.config import Settings
from pipeline.errors import ConfigError
from tests.conftest import SAMPLES, chromium, free_port, require_chromium, run_cli, streamlit_server
from tests.emulators import running
from tests.emulators.oidc import CLIENT_ID, CLIENT_SECRET, OIDCEmulator

READY = "[data-testid='stApp'][data-test-script-state='notRunning']"


# ---- roles ------------------------------------------------------------------------------------------------
def test_roles_come_from_the_access_table_by_email_without_regard_to_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "darkroom.toml"
    override.write_text('[access]\nadmins = ["Boss@Studio.example"]\noperators = ["olga@studio.example", "boss@studio.example"]\n')
    monkeypatch.setenv("DARKROOM_CONFIG", str(override))
    config = access_config(Settings.from_env())
    assert role_for(config, "boss@studio.example ") is Role.admin  # listed twice: the higher role
    assert role_for(config, "OLGA@studio.example") is Role.operator
    assert role_for(config, "ana@studio.example") is Role.reviewer
    assert role_for(config, "") is Role.reviewer


def test_what_each_role_may_do() -> None:
    assert [a for a in ("review", "export", "launch", "cancel", "resume", "settings") if allowed(Role.reviewer, a)] == ["review", "export"]
    assert not allowed(Role.operator, "settings") and allowed(Role.operator, "launch") and allowed(Role.operator, "resume")
    assert all(allowed(Role.admin, a) for a in ("review", "launch", "settings"))
    assert refusal(Role.reviewer, "launch") == "Only operators and admins may launch runs; you are signed in as a reviewer."
    assert refusal(Role.operator, "settings") == "Only admins may see the Settings; you are signed in as an operator."


@pytest.mark.parametrize("table, message", [
    ('default_role = "boss"', "default_role = 'boss' is not a role"),
    ('admins = "ana@studio.example"', "access.admins = 'ana@studio.example' should be a list"),
])
def test_a_wrong_access_table_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, message: str) -> None:
    override = tmp_path / "darkroom.toml"
    override.write_text(f"[access]\n{table}\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(override))
    with pytest.raises(ConfigError, match=message):
        access_config(Settings.from_env())


def test_a_default_role_of_operator_lets_every_signed_in_user_run() -> None:
    config = AccessConfig(admins=frozenset(), operators=frozenset(), default_role=Role.operator)
    assert role_for(config, "anyone@studio.example") is Role.operator


# ---- sign-in in a browser ---------------------------------------------------------------------------------
@pytest.fixture
def browser() -> Iterator[object]:
    require_chromium()
    with chromium() as b:
        yield b


def settle(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector(READY)


def sign_in(browser, url: str, emulator: OIDCEmulator, who: dict[str, str]):  # type: ignore[no-untyped-def]
    """A new browser (own cookies) signs in as ``who`` through the provider's real redirects."""
    emulator.next_user = who
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    settle(page)
    assert page.get_by_test_id("stSidebarNav").count() == 0  # nothing but the sign-in button before signing in
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/**")
    page.get_by_text(f"Signed in as {who['name']}").wait_for()
    settle(page)
    return page


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """One finished run, and boss@studio.example listed as an admin (before the browser starts its event loop)."""
    assert run_cli("run", str(SAMPLES / "seed.json"), "--iterations", "1").code == 0
    (tmp_path / "data" / "darkroom.toml").write_text('[access]\nadmins = ["boss@studio.example"]\n')
    return tmp_path / "data"


def test_sign_in_carries_the_identity_and_the_role_limits_the_pages(data: Path, tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with running(OIDCEmulator(redirect_uri=f"{url}/oauth2callback")) as emulator:
        secrets_file = tmp_path / "secrets.toml"
        secrets_file.write_text(
            f'[auth]\nredirect_uri = "{url}/oauth2callback"\ncookie_secret = "{secrets.token_hex(32)}"\n'
            f'client_id = "{CLIENT_ID}"\nclient_secret = "{CLIENT_SECRET}"\n'
            f'server_metadata_url = "{emulator.url}/.well-known/openid-configuration"\n')
        with streamlit_server(data, tmp_path / "streamlit.log", port=port, args=("--secrets.files", str(secrets_file))):
            ana = sign_in(browser, url, emulator, {"sub": "u-ana", "email": "ana@studio.example", "name": "Ana"})
            assert ana.get_by_text("Signed in as Ana (reviewer)").is_visible()
            assert ana.get_by_label("Your name (reviewer)").count() == 0  # the identity is the sign-in, never typed
            nav = ana.get_by_test_id("stSidebarNav")
            assert nav.get_by_text("Gallery", exact=True).count() == 1 and nav.get_by_text("Settings", exact=True).count() == 0
            ana.goto(f"{url}/new_run")
            settle(ana)
            ana.get_by_text("Only operators and admins may launch runs; you are signed in as a reviewer.").wait_for()
            ana.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(SAMPLES / "seed.json"))  # she may still check one
            ana.get_by_role("button", name="Launch run").wait_for()
            assert ana.get_by_role("button", name="Launch run").is_disabled()
            ana.goto(f"{url}/settings")  # not her page: Streamlit falls back to the default
            settle(ana)
            assert ana.get_by_role("heading", name="Settings").count() == 0

            boss = sign_in(browser, url, emulator, {"sub": "u-boss", "email": "boss@studio.example", "name": "Bea Boss"})
            assert boss.get_by_text("Signed in as Bea Boss (admin)").is_visible()
            assert boss.get_by_test_id("stSidebarNav").get_by_text("Settings", exact=True).count() == 1
            assert emulator.sign_ins == ["ana@studio.example", "boss@studio.example"]

            boss.get_by_role("button", name="Sign out").click()
            boss.get_by_role("button", name="Sign in").wait_for()
            assert boss.get_by_test_id("stSidebarNav").count() == 0
