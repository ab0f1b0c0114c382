"""A user in a real browser on the hub's platform page (/hub/platform): quotas, groups, a new group.

Headless Chromium (Debian's package) driven by Playwright, as in test_hub_browser.py.
The user signs up, is approved and signs in (test_hub.new_approved_user) and gets a
platform account as the hub's provisioning makes it at a first server start (as
test_collab does). In the browser they sign in, follow the navigation bar's Platform
link, see their quotas and the groups section, create a group with the page's form
and see it listed with themselves as its owner. The screenshot is kept as
`<inventory>/logs/e2e/platform-page.png`; the group is deleted and purged afterwards.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CA_CERT, INVENTORY, PUBLIC_URL, ca_cert, deployed, host_of  # noqa: F401
from tests.integration.test_hub import PASSWORD, api, new_approved_user

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = INVENTORY / "logs" / "e2e"  # beside the deploy logs (not committed)
PY = "/opt/sciplat/venv/bin/python"  # sciplat_hub's venv on the hosts
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
    pytest.mark.skipif(not CA_CERT.is_file(), reason="no deployed test bed (run the integration tests first)"),
]


def sign_in(page: Any, name: str) -> None:
    page.goto(PUBLIC_URL + "/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    page.wait_for_url("**/hub/home**")


def provisioned_user(gw: Any, prefix: str, ca_cert: Path) -> dict[str, Any]:  # noqa: F811
    """A new signed-in user (test_hub.new_approved_user) with the accounts of a first server start."""
    user = new_approved_user(prefix, ca_cert)
    done = gw.run(f"{PY} -m sciplat_hub.provision --json {user['name']}")
    assert done.rc == 0, done.stdout + done.stderr
    return user


def test_platform_page_shows_quotas_and_groups_and_creates_a_group(
    host_of: Callable[[str], Any],  # noqa: F811
    ca_cert: Path,  # noqa: F811
) -> None:
    gw = host_of("gw")
    user = provisioned_user(gw, "pp", ca_cert)
    name = user["name"]
    group = f"page-{secrets.token_hex(3)}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--ignore-certificate-errors"])
            page = browser.new_page(ignore_https_errors=True, viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            try:
                sign_in(page, name)
                page.click("#nav-platform")
                page.wait_for_url("**/hub/platform")
                assert page.locator(".platform-error").count() == 0, page.locator(".platform-error").all_inner_texts()
                quotas = page.locator("#platform-quotas")
                assert "Home directory" in quotas.inner_text()
                assert page.locator("#quota-home .quota-limit").inner_text().endswith("iB"), "the home quota, in units"
                assert page.locator("#quota-home .progress").count() == 1
                assert page.locator("#platform-groups").is_visible()
                assert page.locator("#no-groups").is_visible(), "a new user is in no group"
                page.fill("#group-name", group)
                page.fill("#group-description", "made in a browser")
                page.click("#create-group-submit")
                page.wait_for_url("**/hub/platform")
                card = page.locator(f"#group-{group}")
                card.wait_for()
                assert page.locator("#platform-flash").inner_text() == f"You created the group {group}."
                assert "made in a browser" in card.inner_text()
                assert card.locator(f"tr[data-member='{name}']").inner_text().split() == [
                    name,
                    "(you)",
                    "owner",
                    "Leave",
                ]
                page.screenshot(path=str(ARTIFACTS / "platform-page.png"), full_page=True)
                # a refusal: the API's sentence on the page (nobody has this name: names start with a letter)
                missing = f"nobody{secrets.token_hex(3)}"
                card.locator("input[name=user]").fill(missing)
                card.locator("button", has_text="Add").click()
                page.wait_for_url("**/hub/platform")
                flash = page.locator("#platform-flash")
                assert "alert-danger" in (flash.get_attribute("class") or "")
                assert missing in flash.inner_text() and "account" in flash.inner_text(), flash.inner_text()
                page.reload()
                assert page.locator("#platform-flash").count() == 0, "the outcome is shown once"
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "platform-page-failed.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        gw.run(f"{PY} -m sciplat_hub.collab delete {group}")
        gw.run(f"{PY} -m sciplat_hub.collab purge {group} --yes")
    assert (ARTIFACTS / "platform-page.png").stat().st_size > 10_000
    # the page's own tokens (one per page view) were deleted when each view was done
    tokens = api(user["token"], "GET", f"/hub/api/users/{name}/tokens", ca_cert)
    assert tokens.status_code == 200, tokens.text
    assert not [t for t in tokens.json()["api_tokens"] if t.get("note") == "the hub's platform page"]


def test_a_notebook_shared_on_the_page_is_listed_for_the_recipient_with_its_link(
    host_of: Callable[[str], Any],  # noqa: F811
    ca_cert: Path,  # noqa: F811
) -> None:
    gw = host_of("gw")
    a, b = provisioned_user(gw, "ps", ca_cert), provisioned_user(gw, "ps", ca_cert)
    notebook = f"fit-{secrets.token_hex(2)}.ipynb"
    made = gw.run(f"runuser -u {a['name']} -- sh -c 'echo {{}} > /home/{a['name']}/{notebook}'")
    assert made.rc == 0, made.stderr

    def shared_with_b() -> list[str]:
        # B's own view of the page (B's signed-in session): the links of what is shared with B
        seen = b["session"].get(PUBLIC_URL + "/hub/platform", timeout=60)
        assert seen.status_code == 200 and "platform-error" not in seen.text
        return re.findall(r'<a href="([^"]+)" target="_blank" rel="noopener">Open in JupyterLab</a>', seen.text)

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--ignore-certificate-errors"])
        page = browser.new_page(ignore_https_errors=True, viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            sign_in(page, a["name"])
            page.goto(PUBLIC_URL + "/hub/platform")
            page.select_option("#share-kind", "path")
            page.fill("#share-target", notebook)
            page.select_option("#share-grantee-kind", "user")
            page.fill("#share-grantee", b["name"])
            page.locator("#share-form button[type=submit]").click()
            page.wait_for_url("**/hub/platform")
            assert (
                page.locator("#platform-flash").inner_text()
                == f"You shared {notebook} with user:{b['name']} (read-only)."
            )
            assert b["name"] in page.locator("#shared-by-me").inner_text()
            assert shared_with_b() == [f"/hub/user-redirect/lab/tree/shared/{a['name']}/{notebook}"]
            page.locator("#shared-by-me button", has_text="Stop sharing").click()
            page.wait_for_url("**/hub/platform")
            assert page.locator("#platform-flash").inner_text() == "You stopped sharing it."
            assert page.locator("#shared-by-me").count() == 0
            assert shared_with_b() == []
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "platform-share-failed.png"), full_page=True)
            raise
        finally:
            browser.close()
