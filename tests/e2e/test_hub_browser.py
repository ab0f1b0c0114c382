"""A user in a real browser: sign up, get approved, sign in, JupyterLab loads, a cell runs.

Headless Chromium from Debian's `chromium` package, driven by Playwright
(PyPI) through `executable_path` (Playwright's own browser downloads are not
used). The screenshot of the notebook with the cell's output is kept as
`<inventory>/logs/e2e/hub-notebook.png`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil

import pytest

from tests.integration.conftest import CA_CERT, INVENTORY, PUBLIC_URL, sciplat

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = INVENTORY / "logs" / "e2e"  # beside the deploy logs (not committed)
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")


@pytest.mark.skipif(not CA_CERT.is_file(), reason="no deployed test bed (run the integration tests first)")
def test_sign_up_approve_sign_in_and_run_a_cell() -> None:
    name = "w" + secrets.token_hex(3)
    password = "browser-" + secrets.token_hex(8)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--ignore-certificate-errors"])
            page = browser.new_page(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(PUBLIC_URL + "/hub/signup")
            page.fill("input[name=username]", name)
            page.fill("input[name=signup_password]", password)
            page.fill("input[name=signup_password_confirmation]", password)
            page.click("input[type=submit]")
            page.wait_for_load_state()
            assert json.loads(sciplat("users", "approve", name, "-i", str(INVENTORY), "--json").stdout)["ok"]
            page.goto(PUBLIC_URL + "/hub/login")
            page.fill("#username_input", name)
            page.fill("#password_input", password)
            page.click("#login_submit")
            page.wait_for_url("**/hub/home**")
            page.goto(PUBLIC_URL + "/hub/spawn")
            if page.locator("#spawn_form").count():  # several sizes (compute.profiles): the default one
                page.click("#spawn_form [type=submit]")
            page.wait_for_url(f"**/user/{name}/lab**", timeout=240_000)
            # a new notebook from the launcher's tile
            page.locator(".jp-LauncherCard[title*='Python 3']").first.click()
            # the kernel must be connected before the cell runs
            page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=240_000)
            cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            cell.click()
            page.keyboard.type("print(6 * 7, 'from', __import__('getpass').getuser())")
            page.keyboard.press("Shift+Enter")
            page.wait_for_timeout(2000)
            if not page.locator(".jp-OutputArea-output").count():  # typed before the kernel answered
                page.locator(".jp-Notebook .jp-Cell").first.click()
                page.keyboard.press("Control+Enter")
            output = page.locator(".jp-OutputArea-output").first
            try:
                output.wait_for(timeout=240_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "hub-notebook-failed.png"), full_page=True)
                raise
            assert output.inner_text().strip() == f"42 from {name}"
            page.screenshot(path=str(ARTIFACTS / "hub-notebook.png"), full_page=True)
            browser.close()
    finally:
        stop_server(name)
    assert (ARTIFACTS / "hub-notebook.png").stat().st_size > 10_000


def stop_server(name: str) -> None:
    """Leave no server behind: with hub_spawner slurm it is a Slurm job holding a compute node for hours."""
    import requests

    done = sciplat("token", name, "-i", str(INVENTORY), "--json", check=False)
    if done.returncode != 0:  # the user was never made: nothing runs
        return
    token = json.loads(done.stdout)["token"]
    url = PUBLIC_URL + f"/hub/api/users/{name}/server"
    stopped = requests.delete(url, headers={"Authorization": f"token {token}"}, verify=str(CA_CERT), timeout=120)
    assert stopped.status_code in (202, 204, 404), stopped.text
