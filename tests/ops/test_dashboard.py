"""The dashboard in a real headless Chromium: sign in, watch a run live, a job's page, cancel.

The run is driven by the tests' ApiClient acting as a grader (register, poll with wait=0,
report), so no Docker is needed; the page must follow without being reloaded.
"""

from __future__ import annotations

import json

from selenium.webdriver.common.by import By

from broadway.server import ApiService
from tests.helpers import CLIENT_TOKEN, ApiClient, run_config
from tests.ops.conftest import DESKTOP, PHONE, Browser

# A stage result as graders report it; its output holds markup that must show as text.
HOSTILE_OUTPUT = "<img src=x onerror=\"document.title='pwned'\"><b>all 3 tests passed</b>"


def stage_result(output: str, exit_code: int = 0) -> str:
    stage = {"image": "busybox-test", "exit_code": exit_code, "timed_out": False, "output": output, "duration_s": 0.4}
    return json.dumps({"stages": [stage]})


async def sign_in(browser: Browser, base_url: str, token: str = CLIENT_TOKEN) -> None:
    await browser.get(base_url + "/dashboard")
    field = await browser.find("#token")
    await browser.call(field.send_keys, token)
    button = await browser.find("#sign-in-form button[type=submit]")
    await browser.call(button.click)


async def test_dashboard_follows_a_run_from_queued_to_succeeded(api_service: ApiService, browser: Browser) -> None:
    api = ApiClient(api_service.url)
    await sign_in(browser, api_service.url)
    await browser.wait_text("#workers-total", lambda t: "0 alive" in t)
    # Set on the page once: a reload would lose it.
    await browser.script("window.__sameDocument = true")

    run_id = await api.submit_and_start(run_config(students=2))
    run_card = f'article[data-run-id="{run_id}"]'
    await browser.wait_text(run_card, lambda t: "running" in t and "2 queued" in t and "0 of 2 jobs done" in t)
    await browser.wait_text("#queues tbody", lambda t: t.split() == ["default", "2", "0"])

    worker = await api.register(name="grader-one")
    first = (await api.poll(worker, wait=0)).json
    await browser.wait_text("#workers tbody", lambda t: "grader-one" in t and "1 / 1" in t and first["job_id"] in t)
    await browser.wait_text(run_card, lambda t: "1 running" in t and "1 queued" in t)
    assert worker not in await browser.text("body"), "the worker id (a credential) is on the page"

    done = await api.report(worker, first["job_id"], result=stage_result(HOSTILE_OUTPUT), success=True)
    assert done.status == 200, done.body
    second = (await api.poll(worker, wait=0)).json
    done = await api.report(worker, second["job_id"], result=stage_result("1 test failed", 1), success=False)
    assert done.status == 200, done.body

    text = await browser.wait_text(run_card, lambda t: "2 of 2 jobs done" in t and "succeeded" in t)
    assert "1 succeeded" in text and "1 failed" in text, text
    assert await browser.script("return window.__sameDocument === true"), "the page was reloaded"
    await browser.wait_text("#workers tbody", lambda t: "0 / 1" in t and "none" in t)
    await browser.screenshot("dashboard-desktop", DESKTOP)
    width = await browser.script("return document.documentElement.clientWidth")
    await browser.screenshot("dashboard-phone", PHONE)
    assert await browser.script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), (
        "the overview scrolls sideways at phone width"
    )
    assert width >= 1200

    # The job page: its stage's exit code and output, the output's markup shown as text.
    await browser.get(f"{api_service.url}/dashboard/job/{first['job_id']}")
    stage = await browser.wait_text("article.stage", lambda t: "exit code 0" in t)
    assert "busybox-test" in stage and HOSTILE_OUTPUT in stage, stage
    assert await browser.script("return document.title") != "pwned"
    assert "succeeded" in await browser.text("dl.facts")
    await browser.screenshot("job-phone", PHONE)
    await browser.get(f"{api_service.url}/dashboard/job/{second['job_id']}")
    await browser.wait_text("article.stage", lambda t: "exit code 1" in t and "1 test failed" in t)

    assert await browser.console_errors() == []


async def test_wrong_token_shows_a_sign_in_error_and_no_data(api_service: ApiService, browser: Browser) -> None:
    api = ApiClient(api_service.url)
    run_id = await api.submit(run_config(students=1))
    await sign_in(browser, api_service.url, token="not-the-client-token")
    error = await browser.wait_text("#sign-in-error", lambda t: t != "")
    assert "not accepted" in error, error
    assert not await browser.call(browser.driver.find_element(By.ID, "content").is_displayed)
    assert run_id not in await browser.text("body")
    assert await browser.script("return sessionStorage.length") == 0
    # The right token then works in the same tab, and is kept only in sessionStorage.
    field = await browser.find("#token")
    await browser.call(field.send_keys, CLIENT_TOKEN)
    await browser.click("#sign-in-form button[type=submit]")
    await browser.wait_text(f'article[data-run-id="{run_id}"]', lambda t: "created" in t)
    assert CLIENT_TOKEN not in await browser.script("return location.href + document.cookie")


async def test_cancel_a_run_after_confirming(api_service: ApiService, browser: Browser) -> None:
    api = ApiClient(api_service.url)
    run_id = await api.submit_and_start(run_config(students=3))
    await sign_in(browser, api_service.url)
    run_card = f'article[data-run-id="{run_id}"]'
    await browser.wait_text(run_card, lambda t: "running" in t)

    await browser.click(f"{run_card} button.danger")
    await browser.wait_text("#confirm", lambda t: "Cancel grading run" in t)
    await browser.click("#confirm button[value=keep]")
    assert (await api.status(run_id))["status"] == "running", "dismissing the dialog cancelled the run"

    await browser.click(f"{run_card} button.danger")
    await browser.click("#confirm-ok")
    await browser.wait_text(run_card, lambda t: "cancelled" in t and "3 cancelled" in t)
    assert (await api.status(run_id))["status"] == "cancelled"
    assert "cancelled" in await browser.text("#action-message")
