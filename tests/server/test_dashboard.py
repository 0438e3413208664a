"""The web dashboard of ``perdure serve``, driven in a real headless Chromium (Debian's
``chromium``, through Playwright with ``executable_path``): sign in with a token, find a run in
the runs list, open its step timeline, approve its pending approval by a click and watch the
workflow complete; retry a failed step; fork a run from a journal entry with a replacement
output and land on the new run; a read-only token gets no Approve nor Fork button.

A screenshot of each page is saved under ``$PERDURE_ARTIFACTS/dashboard/`` (default:
``artifacts/dashboard/`` in the repository) and its path printed.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from server_helpers import serving

import perdure
from conftest import wait_until
from perdure.server import Token, create_app

CHROMIUM = Path(os.environ.get("PERDURE_CHROMIUM", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PERDURE_ARTIFACTS") or ROOT / "artifacts") / "dashboard"

OPERATOR_TOKEN = "op-secret-7f3a"
READER_TOKEN = "read-secret-91bc"
TOKENS = {
    OPERATOR_TOKEN: Token(name="alice", role="operator"),
    READER_TOKEN: Token(name="bob", role="read"),
}

# -- the workflow under test -----------------------------------------------------------------

attempts: dict[str, int] = {}


@perdure.step(retry=perdure.RetryPolicy(initial_interval=0.05, jitter=0.0))
def look_up_order(order_id: str) -> dict[str, Any]:
    attempts[order_id] = attempts.get(order_id, 0) + 1
    if attempts[order_id] == 1:  # one failed attempt, journaled and retried
        raise perdure.TransientError("order service busy")
    return {"order_id": order_id, "amount": 25}


@perdure.step(name="openai.chat.completions.create")
def draft_reply(order: dict[str, Any]) -> dict[str, Any]:
    """Stands in for a journaled model call: the dashboard reads the usage in its output."""
    text = f"Your refund of {order['amount']} EUR is on its way."
    return {"model": "gpt-test", "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30}}  # fmt: skip


@perdure.step
def issue_refund(order_id: str, amount: int) -> str:
    return f"refunded {amount} on {order_id}"


@perdure.workflow(name="dashboard_refund")
def refund(order_id: str) -> str:
    order = look_up_order(order_id)
    draft_reply(order)
    decision = perdure.wait_for_approval(
        "refund",
        details={"tool": "issue_refund", "description": "Refund an order in full.",
                 "arguments": {"order_id": order_id, "amount": order["amount"]}},
    )  # fmt: skip
    if not decision.approved:
        return f"refund refused: {decision.comment}"
    return f"{issue_refund(order_id, order['amount'])} ({decision.comment})"


stock_service_down = {"on": True}


@perdure.step(retry=perdure.NO_RETRY)
def check_stock(sku: str) -> int:
    if stock_service_down["on"]:
        raise ValueError(f"stock service rejected {sku}")
    return 3


@perdure.workflow(name="dashboard_restock")
def restock(sku: str) -> int:
    return check_stock(sku)


ran: Counter[str] = Counter()  # step bodies of dashboard_answer that ran
model = {"answer": "Berlin"}


@perdure.step
def find_sources(question: str) -> list[str]:
    ran["find_sources"] += 1
    return [f"an atlas on {question}"]


@perdure.step(name="draft_answer")
def draft_answer(sources: list[str]) -> str:
    ran["draft_answer"] += 1
    return model["answer"]


@perdure.step
def publish_answer(answer: str) -> str:
    ran["publish_answer"] += 1
    return f"answer: {answer}"


@perdure.workflow(name="dashboard_answer")
def answer_question(question: str) -> str:
    return publish_answer(draft_answer(find_sources(question)))


# -- fixtures ----------------------------------------------------------------------------------


def _chromium_or_skip() -> None:
    """Skip (in CI: fail) when Debian's Chromium is not installed."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install Debian's chromium package"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    print(f"skipping: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _chromium_or_skip()
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses root
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); any uncaught script error fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert errors == [], f"script errors in the page: {errors}"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[perdure.Engine]:
    attempts.clear()
    stock_service_down["on"] = True
    ran.clear()
    model["answer"] = "Berlin"
    with perdure.Engine(f"sqlite:///{tmp_path / 'perdure.db'}", shutdown_grace=0.5) as eng:
        yield eng


@pytest.fixture
def base_url(engine: perdure.Engine) -> Iterator[str]:
    with serving(create_app(engine.url, tokens=TOKENS, engine=engine)) as url:
        yield url


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(base_url)
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("runs-page")).to_be_visible()


def start_waiting_run(engine: perdure.Engine, order_id: str) -> perdure.WorkflowHandle[str]:
    handle = engine.start(refund, order_id, id=f"refund-{order_id}")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.WAITING)
    return handle


# -- tests -------------------------------------------------------------------------------------


def test_an_operator_approves_by_a_click_and_the_run_completes(
    engine: perdure.Engine, base_url: str, page: Page
) -> None:
    handle = start_waiting_run(engine, "order-7")

    page.goto(base_url)
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("login-error")).to_have_text("This token is not valid.")
    screenshot(page, "1-login")
    sign_in(page, base_url, OPERATOR_TOKEN)
    expect(page.get_by_test_id("whoami")).to_have_text("alice (operator)")

    # The runs list shows the run, waiting, and the nav counts its pending approval.
    row = page.locator('[data-testid="run-row"][data-id="refund-order-7"]')
    expect(row.get_by_test_id("run-row-status")).to_have_text("WAITING")
    expect(row).to_contain_text("dashboard_refund")
    expect(page.get_by_test_id("approvals-badge")).to_have_text("1")
    screenshot(page, "2-runs")

    # Its timeline: the retried lookup, the model call with its tokens.
    row.click()
    expect(page).to_have_url(f"{base_url}/#/runs/refund-order-7")
    expect(page.get_by_test_id("run-status")).to_have_text("WAITING")
    steps = page.get_by_test_id("step")
    lookup = steps.filter(has_text="look_up_order")
    expect(lookup.get_by_test_id("step-status")).to_have_text("SUCCESS")
    expect(lookup.get_by_test_id("step-retries")).to_have_text("2 attempts")
    lookup.get_by_text("1 failed attempt").click()
    expect(lookup.get_by_test_id("attempt-error")).to_contain_text("order service busy")
    model_call = steps.filter(has_text="openai.chat.completions.create")
    expect(model_call.get_by_test_id("step-tokens")).to_have_text("120 input / 30 output tokens")
    expect(page.get_by_test_id("run-usage")).to_contain_text("1 call, 120 input and 30 output")
    expect(page.get_by_test_id("run-waiting")).to_contain_text("refund")
    expect(page.get_by_test_id("cancel")).to_be_visible()
    screenshot(page, "3-run-waiting")

    # The inbox: the proposed tool call, a comment, Approve.
    page.get_by_test_id("nav-approvals").click()
    card = page.get_by_test_id("approval")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("issue_refund")
    expect(card.get_by_test_id("approval-details")).to_contain_text('"amount": 25')
    card.get_by_label("Comment").fill("within policy")
    screenshot(page, "4-approvals")
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0)
    expect(page.get_by_test_id("approvals-empty")).to_be_visible()
    expect(page.get_by_test_id("approvals-badge")).to_be_hidden()

    # The workflow completes, and the run page, refreshing itself, says so.
    assert handle.result(timeout=15) == "refunded 25 on order-7 (within policy)"
    page.get_by_test_id("nav-runs").click()
    expect(row.get_by_test_id("run-row-status")).to_have_text("SUCCESS")
    row.click()
    expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
    expect(page.get_by_test_id("run-output")).to_contain_text("refunded 25 on order-7")
    expect(steps.filter(has_text="issue_refund").get_by_test_id("step-status")).to_have_text(
        "SUCCESS"
    )
    expect(page.get_by_test_id("cancel")).to_have_count(0)
    screenshot(page, "5-run-success")


def test_a_read_token_sees_the_inbox_but_cannot_decide(
    engine: perdure.Engine, base_url: str, page: Page
) -> None:
    handle = start_waiting_run(engine, "order-8")
    sign_in(page, base_url, READER_TOKEN)
    expect(page.get_by_test_id("whoami")).to_have_text("bob (read)")

    page.get_by_test_id("nav-approvals").click()
    card = page.get_by_test_id("approval")
    expect(card).to_contain_text("issue_refund")
    expect(page.get_by_test_id("read-only")).to_contain_text("needs an operator token")
    expect(card.get_by_role("button")).to_have_count(0)
    screenshot(page, "6-approvals-read-only")

    # Nor can the token decide behind the page's back: the API refuses it.
    status = page.evaluate(
        """async (token) => {
            const response = await fetch(
                "/api/v1/workflows/refund-order-8/approvals/refund/approve",
                {method: "POST", headers: {Authorization: `Bearer ${token}`}});
            return response.status;
        }""",
        READER_TOKEN,
    )
    assert status == 403

    card.get_by_role("link", name="refund-order-8").click()
    expect(page.get_by_test_id("run-status")).to_have_text("WAITING")
    expect(page.get_by_test_id("read-only")).to_be_visible()
    expect(page.get_by_test_id("cancel")).to_have_count(0)
    expect(page.get_by_test_id("step").first).to_be_visible()
    expect(page.get_by_test_id("fork-from-here")).to_have_count(0)
    assert handle.status() is perdure.WorkflowStatus.WAITING

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()


def test_an_operator_retries_a_failed_step_from_the_run_page(
    engine: perdure.Engine, base_url: str, page: Page
) -> None:
    handle = engine.start(restock, "sku-42", id="restock-sku-42")
    wait_until(lambda: handle.status() is perdure.WorkflowStatus.ERROR)
    sign_in(page, base_url, OPERATOR_TOKEN)

    page.get_by_role("link", name="restock-sku-42").click()
    expect(page.get_by_test_id("run-status")).to_have_text("ERROR")
    expect(page.get_by_test_id("run-error")).to_have_text(
        "ValueError: stock service rejected sku-42"
    )
    step = page.get_by_test_id("step").filter(has_text="check_stock")
    expect(step.get_by_test_id("step-status")).to_have_text("ERROR")
    expect(step.get_by_test_id("step-error")).to_contain_text("stock service rejected")
    expect(page.get_by_test_id("cancel")).to_have_count(0)
    expect(page.get_by_test_id("resume")).to_be_visible()
    screenshot(page, "7-run-error")

    stock_service_down["on"] = False  # the service is fixed: run the failed step again
    page.get_by_role("button", name="Retry failed step").click()
    expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
    expect(page.get_by_test_id("run-output")).to_have_text("3")
    assert handle.result(timeout=15) == 3


def test_an_operator_forks_a_run_from_a_journal_entry(
    engine: perdure.Engine, base_url: str, page: Page
) -> None:
    assert engine.run(answer_question, "France", id="question-1", timeout=15) == "answer: Berlin"
    version = engine.get_workflow("question-1").version
    assert version is not None and ran == Counter(find_sources=1, draft_answer=1,
                                                  publish_answer=1)  # fmt: skip
    sign_in(page, base_url, OPERATOR_TOKEN)
    page.get_by_role("link", name="question-1").click()
    expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
    expect(page.get_by_test_id("run-version")).to_have_text(version)
    expect(page.get_by_test_id("run-forked-from")).to_have_count(0)

    # Fork from the model's answer (#1), recording the corrected answer in its place.
    entry = page.locator('[data-testid="step"][data-position="1"]')
    expect(entry.get_by_test_id("step-name")).to_have_text("draft_answer")
    entry.get_by_role("button", name="Fork from here").click()
    form = entry.get_by_test_id("fork-form")
    expect(form).to_contain_text("replays entry #0")
    output = form.get_by_label("Replacement output (JSON, optional)")
    output.fill("Paris")  # not JSON: refused in the page, nothing is sent
    form.get_by_test_id("fork-confirm").click()
    expect(form.get_by_test_id("fork-error")).to_contain_text("not JSON")
    assert [w.id for w in engine.list_workflows()] == ["question-1"]
    output.fill('"Paris"')
    expect(form.get_by_test_id("fork-error")).to_be_empty()
    screenshot(page, "8-fork-form")
    form.get_by_test_id("fork-confirm").click()

    # The page moves on to the new run, which replayed #0 and #1 and ran #2.
    expect(page).to_have_url(re.compile(r"#/runs/question-1-fork-[0-9a-f]{8}$"))
    fork_id = page.get_by_test_id("run-id").inner_text()
    expect(page.get_by_test_id("run-forked-from")).to_have_text("question-1 at entry #1")
    expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
    expect(page.get_by_test_id("run-output")).to_have_text('"answer: Paris"')
    expect(page.get_by_test_id("step")).to_have_count(3)
    screenshot(page, "9-forked-run")
    assert ran == Counter(find_sources=1, draft_answer=1, publish_answer=2)
    assert engine.handle(fork_id).result(timeout=15) == "answer: Paris"

    # The runs list shows both; the original is unchanged.
    page.get_by_test_id("nav-runs").click()
    rows = page.get_by_test_id("run-row")
    expect(rows).to_have_count(2)
    forked_row = page.locator(f'[data-testid="run-row"][data-id="{fork_id}"]')
    expect(forked_row.get_by_test_id("run-row-status")).to_have_text("SUCCESS")
    page.get_by_role("link", name="question-1", exact=True).click()
    expect(page.get_by_test_id("run-output")).to_have_text('"answer: Berlin"')
