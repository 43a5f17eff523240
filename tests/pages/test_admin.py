"""The administrator's pages in Chromium: the Employees tab, an employee's Summary with the red Disable MFA
button, the switches that make MFA mandatory, tenant isolation, and the admin-sessions call behind them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from services.auth.store import _EMPLOYEES, _SEARCH
from services.common.apikeys import create_key

from ..auth.conftest import Api, EventTap
from .conftest import (
    SEED_NEXT_LOGIN,
    SEED_WARNING,
    account_in,
    admin_link,
    check_axe,
    company_with_admin,
    csrf_of,
    open_admin,
    row_of,
    show,
    tab_to,
)


@pytest.fixture(scope="module")
async def tap(site):
    """Every event the auth app publishes during this module, schema-checked."""
    channel = await site.runtime.broker.channel()
    queue = await channel.declare_queue(site.runtime.queue(f"tap-admin-{uuid.uuid4().hex[:6]}"), exclusive=True)
    await queue.bind(site.runtime.settings.exchange, "#")
    found = EventTap()
    tag = await queue.consume(found.on_message)
    yield found
    await queue.cancel(tag)
    await channel.close()


async def test_the_employees_tab_shows_status_and_why_it_is_forced(site, upstream, page, context):
    company_id, admin_id = await company_with_admin(site, name="Tab BV")
    plain = await account_in(site, company_id, first="Plain", last="Off")
    forced = await account_in(site, company_id, required=True, first="Forced", last="Personal")
    enrolled = await account_in(site, company_id, first="Set", last="Up")
    await site.api.enroll(enrolled)
    pending = await account_in(site, company_id, first="Half", last="Way")
    await site.api.call("POST", f"/v1/accounts/{pending}/mfa/enrollment", expect=201)
    locked = await account_in(site, company_id, first="Locked", last="Out")
    await site.api.enroll(locked)
    until = datetime.now(UTC) + timedelta(minutes=7)
    async with site.runtime.pool.acquire() as conn:
        await conn.execute("UPDATE auth.accounts SET locked_until = $2 WHERE account_id = $1", locked, until)

    url = await admin_link(site, upstream, company_id, admin_id)
    await page.goto(url)
    assert "token" not in page.url and page.url.endswith("/mfa/admin/employees")
    assert await page.locator("h1").inner_text() == "Employees"
    assert await page.locator("header .company").inner_text() == "Tab BV"
    assert await page.locator("#employee-count").inner_text() == "Employees: 6"
    expect = {plain: ("Off", "No"), forced: ("Off", "Yes, for this employee"), enrolled: ("Set up", "No"),
              pending: ("Set-up started, not confirmed yet", "No")}
    for account_id, (status, why) in expect.items():
        cells = await (await row_of(page, account_id)).locator("td").all_inner_texts()
        assert cells == [f"{account_id}@example.com", status, why]
    locked_cells = await (await row_of(page, locked)).locator("td").all_inner_texts()
    assert locked_cells[1].startswith("Locked until ") and until.strftime("%H:%M") in locked_cells[1]
    await check_axe(page)

    # The company switch: forced by the company everywhere after it.
    await page.get_by_role("button", name="Require MFA for every employee").click()
    await page.wait_for_url("**/mfa/admin/employees?notice=company_on")
    cells = await (await row_of(page, forced)).locator("td").all_inner_texts()
    assert cells[2] == "Yes, by the company and for this employee"
    assert (await (await row_of(page, plain)).locator("td").all_inner_texts())[2] == "Yes, by the company"

    # The link was single use.
    other = await context.browser.new_context()
    try:
        second = await other.new_page()
        response = await second.goto(url)
        assert response.status == 410 and await second.locator("h1").inner_text() == "This link was already used"
    finally:
        await other.close()


async def test_the_company_switch_sends_unenrolled_employees_to_enrolment_and_names_the_admin(site, upstream, page, tap):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id)
    _, before = await site.api.call("POST", "/v1/logins", {"account_id": staff}, expect=201)
    assert before["decision"] == "allow"
    await open_admin(site, upstream, page, company_id, admin_id)
    assert SEED_NEXT_LOGIN in await page.locator("#company-policy-hint").inner_text()
    await page.get_by_role("button", name="Require MFA for every employee").click()
    await page.wait_for_url("**/mfa/admin/employees?notice=company_on")
    notice = await page.locator(".message.notice").inner_text()
    assert "directly sees the configuration screen" in notice and "set up immediately" in notice
    assert await page.locator("#company-policy").inner_text() == (
        f"{await page.locator('header .company').inner_text()} requires multifactor authentication for every employee.")
    _, after = await site.api.call("POST", "/v1/logins", {"account_id": staff}, expect=201)
    assert after["decision"] == "enroll"
    changed = (await tap.wait(company_id, "MfaPolicyChanged"))[0]
    assert changed["data"]["scope"] == "company" and changed["data"]["mfa_required"] is True
    assert (changed["authtype"], changed["authid"]) == ("user", admin_id)
    upserted = (await tap.wait(company_id, "CompanyUpserted"))[-1]
    assert upserted["authid"] == admin_id and upserted["data"]["mfa_required"] is True

    await page.get_by_role("button", name="Stop requiring MFA for every employee").click()
    await page.wait_for_url("**/mfa/admin/employees?notice=company_off")
    changes = await tap.wait(company_id, "MfaPolicyChanged", 2)
    assert changes[1]["data"]["mfa_required"] is False and changes[1]["authid"] == admin_id


async def test_disable_mfa_turns_it_off_when_not_forced_with_the_admin_as_actor(site, upstream, page, tap):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id, first="Broken", last="Phone")
    await site.api.enroll(staff)
    await open_admin(site, upstream, page, company_id, admin_id)
    await page.get_by_role("link", name="Broken Phone").click()
    await page.wait_for_url(f"**/mfa/admin/employees/{staff}")
    assert await page.locator("h1").inner_text() == "Summary: Broken Phone"
    assert await page.get_by_role("heading", name="Personal information").count() == 1
    assert await page.locator("#employee-email").inner_text() == f"{staff}@example.com"
    assert (await page.locator("#employee-status").inner_text()).startswith("Set up since")
    button = page.get_by_role("button", name="Disable MFA")
    assert await button.is_enabled()
    color = await button.evaluate("b => getComputedStyle(b).backgroundColor")
    assert color == "rgb(180, 35, 24)"  # the seed's red button
    await check_axe(page)
    await button.click()
    await page.wait_for_url(f"**/mfa/admin/employees/{staff}?notice=mfa_off")
    assert await page.locator("#employee-status").inner_text() == "Off"
    assert await page.get_by_role("button", name="Disable MFA").count() == 0
    _, status = await site.api.call("GET", f"/v1/accounts/{staff}/mfa", expect=200)
    assert status["enabled"] is False
    disabled = (await tap.wait(staff, "MfaDisabled"))[0]
    assert disabled["data"]["reason"] == "admin" and disabled["data"]["actor_account_id"] == admin_id
    assert (disabled["authtype"], disabled["authid"]) == ("user", admin_id)


@pytest.mark.parametrize("by", ["personal", "company"])
async def test_disable_mfa_is_refused_while_forced_on_the_page_and_by_the_server(site, upstream, page, by):
    company_id, admin_id = await company_with_admin(site, required=by == "company")
    staff = await account_in(site, company_id, required=by == "personal", first="Forced", last="Person")
    await site.api.enroll(staff)
    await open_admin(site, upstream, page, company_id, admin_id)
    await page.goto(f"{site.base}/mfa/admin/employees/{staff}")
    button = page.get_by_role("button", name="Disable MFA")
    assert await button.is_disabled()
    warning = await page.locator("#disable-refused").inner_text()
    assert SEED_WARNING in warning
    assert ("for this employee personally" if by == "personal" else "every employee of the company") in warning
    assert await button.get_attribute("aria-describedby") == "disable-refused"
    await check_axe(page)
    # Whatever the page sends: a forged POST with a valid token is refused by the server.
    response = await page.request.post(f"{site.base}/mfa/admin/employees/{staff}/disable",
                                       form={"csrf": await csrf_of(page)}, headers={"Origin": site.base})
    assert response.status == 409
    assert SEED_WARNING in await response.text()
    _, status = await site.api.call("GET", f"/v1/accounts/{staff}/mfa", expect=200)
    assert status["enabled"] is True and status["backup_codes_left"] == 10
    # The JSON API says the same, with its stable code.
    code, problem = await site.api.call("DELETE", f"/v1/accounts/{staff}/mfa", {"actor_account_id": admin_id})
    assert code == 409 and problem["code"] == "mfa_forced"


async def test_the_personal_switch_requires_mfa_for_one_employee(site, upstream, page, tap):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id, first="Solo", last="Switch")
    await site.api.enroll(staff)
    await open_admin(site, upstream, page, company_id, admin_id)
    await page.goto(f"{site.base}/mfa/admin/employees/{staff}")
    assert SEED_NEXT_LOGIN in await page.locator("#personal-policy-hint").inner_text()
    await page.get_by_role("button", name="Require MFA for this employee").click()
    await page.wait_for_url(f"**/{staff}?notice=personal_on")
    assert "directly sees the configuration screen" in await page.locator(".message.notice").inner_text()
    assert await page.locator("#employee-forced").inner_text() == "Yes, for this employee"
    assert await page.get_by_role("button", name="Disable MFA").is_disabled()
    changed = (await tap.wait(staff, "MfaPolicyChanged"))[0]
    assert changed["data"]["scope"] == "account" and changed["data"]["mfa_required"] is True
    assert (changed["authtype"], changed["authid"]) == ("user", admin_id)
    upserted = (await tap.wait(staff, "AccountUpserted", 2))[-1]  # the first is the account's creation
    assert (upserted["authtype"], upserted["authid"]) == ("user", admin_id)
    assert upserted["data"]["mfa_required"] is True and upserted["data"]["email"] == f"{staff}@example.com"
    _, status = await site.api.call("GET", f"/v1/accounts/{staff}/mfa", expect=200)
    assert status["forced"] is True and status["enabled"] is True  # only the requirement changed

    await page.get_by_role("button", name="Stop requiring MFA for this employee").click()
    await page.wait_for_url(f"**/{staff}?notice=personal_off")
    assert await page.get_by_role("button", name="Disable MFA").is_enabled()
    assert (await tap.wait(staff, "MfaPolicyChanged", 2))[1]["data"]["mfa_required"] is False
    # The switch kept everything else the upstream set: names, email, role.
    async with site.runtime.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT first_name, last_name, email, role FROM auth.accounts WHERE account_id = $1",
                                  staff)
    assert tuple(row) == ("Solo", "Switch", f"{staff}@example.com", "employee")


async def _bulk(site, company_id: str, count: int, domain: str) -> list[str]:
    """`count` employees by SQL, emails emp0001@domain...: the order the tab must show them in."""
    async with site.runtime.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO auth.accounts (account_id, company_id, email, first_name, last_name, role)
               SELECT $1 || '-' || g, $2, 'emp' || lpad(g::text, 4, '0') || '@' || $3, 'Person', 'Number' || g,
                      'employee'
               FROM generate_series(1, $4) g""",
            uuid.uuid4().hex[:8], company_id, domain, count)
    return [f"emp{n:04d}@{domain}" for n in range(1, count + 1)]


async def _emails(page) -> list[str]:
    return await page.locator("table.employees tbody tr td:first-of-type").all_inner_texts()


async def test_search_and_paging_over_a_few_hundred_employees(site, upstream, page):
    company_id, admin_id = await company_with_admin(site)
    domain = f"bulk-{uuid.uuid4().hex[:6]}.example"
    expected = await _bulk(site, company_id, 260, domain)
    await open_admin(site, upstream, page, company_id, admin_id)
    assert await page.locator("#employee-count").inner_text() == "Employees: 261"
    seen = [e for e in await _emails(page) if e.endswith(domain)]
    pages = 1
    while await page.get_by_role("link", name="Next page").count():
        await page.get_by_role("link", name="Next page").click()
        await page.wait_for_load_state()
        seen += await _emails(page)
        pages += 1
    assert seen == expected and pages == 6  # 50 a page (the admin first), in email order, none twice
    await check_axe(page)
    await page.get_by_role("link", name="Previous page").click()
    await page.wait_for_load_state()
    assert await _emails(page) == expected[199:249]

    await page.get_by_label("Search by name or email").fill("number17")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_load_state()
    assert "q=number17" in page.url
    found = await _emails(page)
    assert found == [f"emp{n:04d}@{domain}" for n in [17, *range(170, 180)]]
    assert await page.locator("#employee-count").inner_text() == "Found for “number17”: 11 Show all employees"
    assert await page.get_by_role("link", name="Next page").count() == 0
    await page.get_by_label("Search by name or email").fill("Person Number25")  # first and last name together
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_load_state()
    assert await _emails(page) == [f"emp{n:04d}@{domain}" for n in [25, *range(250, 260)]]
    await page.get_by_label("Search by name or email").fill("%")  # a wildcard is searched for literally
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_load_state()
    assert (await page.locator("#employee-count").inner_text()).startswith("Found for “%”: 0")
    await page.get_by_role("link", name="Show all employees").click()
    await page.wait_for_url("**/mfa/admin/employees")
    assert await page.locator("#employee-count").inner_text() == "Employees: 261"
    # A cursor that was tampered with starts from the first page instead of failing.
    response = await page.goto(f"{site.base}/mfa/admin/employees?after=%%%garbage")
    assert response.status == 200 and (await _emails(page))[1] == expected[0]


async def test_a_company_of_5000_pages_by_index_without_sorting(site):
    company_id = await site.api.company()
    await _bulk(site, company_id, 5000, f"big-{uuid.uuid4().hex[:6]}.example")
    async with site.runtime.pool.acquire() as conn:
        await conn.execute("ANALYZE auth.accounts")
        plans = []
        for backwards, cursor in ((False, None), (False, ("emp2500@x", "zz")), (True, ("emp2500@x", "zz"))):
            order = "DESC" if backwards else "ASC"
            keyset = f" AND (a.email, a.account_id) {'<' if backwards else '>'} ($3, $4)" if cursor else ""
            sql = f"EXPLAIN (FORMAT JSON) {_EMPLOYEES}{_SEARCH}{keyset} ORDER BY a.email {order}, a.account_id {order} LIMIT 51"
            plan = await conn.fetchval(sql, company_id, None, *(cursor or ()))
            plans.append(str(plan))
    for plan in plans:
        assert "accounts_company_email" in plan and "'Sort'" not in plan and '"Sort"' not in plan, plan


async def test_an_admin_of_one_company_sees_nothing_of_another(site, upstream, page):
    company_a, admin_a = await company_with_admin(site)
    company_b, _ = await company_with_admin(site)
    theirs = await account_in(site, company_b, first="Other", last="Company")
    await site.api.enroll(theirs)
    await open_admin(site, upstream, page, company_a, admin_a)
    assert await page.get_by_text("Other Company").count() == 0
    response = await page.goto(f"{site.base}/mfa/admin/employees/{theirs}")
    assert response.status == 404 and await page.locator("h1").inner_text() == "Employee not found"
    await page.goto(f"{site.base}/mfa/admin/employees")
    csrf = await csrf_of(page)
    for action in ("disable", "require"):
        response = await page.request.post(f"{site.base}/mfa/admin/employees/{theirs}/{action}",
                                           form={"csrf": csrf, "required": "yes"}, headers={"Origin": site.base})
        assert response.status == 404
    _, status = await site.api.call("GET", f"/v1/accounts/{theirs}/mfa", expect=200)
    assert status["enabled"] is True and status["forced"] is False
    # A key bound to company A cannot open a session for company B, nor learn that it exists.
    bound = Api(site.api.client, await create_key(site.runtime.pool, "service", company_id=company_a, label="a"))
    code, problem = await bound.call("POST", f"/v1/companies/{company_b}/admin-sessions",
                                     {"actor_account_id": admin_a, "return_to": f"{upstream.base}/back"})
    assert code == 404 and problem["code"] == "company_not_found"
    code, _ = await bound.call("POST", f"/v1/companies/{company_a}/admin-sessions",
                               {"actor_account_id": admin_a, "return_to": f"{upstream.base}/back"})
    assert code == 201


async def test_admin_sessions_are_for_admins_of_that_company_only(site, upstream):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id)
    other_company, other_admin = await company_with_admin(site)
    back = {"return_to": f"{upstream.base}/back"}
    cases = [
        (company_id, staff, 403, "not_company_admin"),
        (company_id, other_admin, 404, "account_not_found"),
        (company_id, "nobody-here", 404, "account_not_found"),
        ("no-such-company", admin_id, 404, "company_not_found"),
    ]
    for company, actor, status, code in cases:
        got, problem = await site.api.call("POST", f"/v1/companies/{company}/admin-sessions",
                                           {"actor_account_id": actor, **back})
        assert (got, problem["code"]) == (status, code), (company, actor)
    got, problem = await site.api.call("POST", f"/v1/companies/{company_id}/admin-sessions",
                                       {"actor_account_id": admin_id, "return_to": "https://evil.example/x"})
    assert (got, problem["code"]) == (400, "return_to_not_allowed")
    got, problem = await site.api.call("POST", f"/v1/companies/{company_id}/admin-sessions", {"actor_account_id": admin_id})
    assert (got, problem["code"]) == (400, "missing_field")
    assert other_company != company_id


async def test_an_employees_session_is_refused_and_a_demoted_admin_loses_access(site, upstream, page):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id)
    _, portal = await site.api.call("POST", f"/v1/accounts/{staff}/portal-sessions",
                                    {"return_to": f"{upstream.base}/back"}, expect=201)
    await page.goto(portal["url"])  # the employee's own "My login" session
    response = await page.goto(f"{site.base}/mfa/admin/employees")
    assert response.status == 410 and await page.get_by_role("table").count() == 0
    response = await page.goto(f"{site.base}/mfa/admin?token={portal['url'].split('token=')[1]}")
    assert response.status == 410  # a portal token is not an admin token

    await open_admin(site, upstream, page, company_id, admin_id)
    await site.api.call("PUT", f"/v1/accounts/{admin_id}", {
        "company_id": company_id, "email": f"{admin_id}@example.com", "first_name": "Grace", "last_name": "Hopper",
        "role": "employee", "mfa_required": False}, expect=200)
    response = await page.reload()
    assert response.status == 403 and await page.locator("h1").inner_text() == "Only for administrators"


async def test_a_cross_site_post_is_refused(site, upstream, page):
    company_id, admin_id = await company_with_admin(site)
    await open_admin(site, upstream, page, company_id, admin_id)
    forge = (f"{upstream.base}/forge?action={quote(site.base + '/mfa/admin/require')}&field=required&value=yes")
    await page.goto(forge)
    async with page.expect_response(f"{site.base}/mfa/admin/require") as answer:
        await page.click("#go")
    assert (await answer.value).status in (403, 410)
    async with site.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT mfa_required FROM auth.companies WHERE company_id = $1", company_id) is False
    await page.goto(f"{site.base}/mfa/admin/employees")
    response = await page.request.post(f"{site.base}/mfa/admin/require", form={"required": "yes"},
                                       headers={"Origin": site.base})
    assert response.status == 403  # the session's cookie, but no form token


async def test_keyboard_only_from_search_to_disable_mfa(site, upstream, page):
    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id, first="Keyboard", last="User")
    await account_in(site, company_id, first="Someone", last="Else")
    await site.api.enroll(staff)
    await open_admin(site, upstream, page, company_id, admin_id)

    await tab_to(page, "#q", limit=40)
    await page.keyboard.type("Keyboard")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**q=Keyboard")
    await tab_to(page, f'a[href$="/{staff}"]', limit=40)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/mfa/admin/employees/{staff}")
    await tab_to(page, "#disable-mfa", limit=40)
    focus_ring = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert focus_ring == "solid"
    await page.keyboard.press("Enter")
    await page.wait_for_url("**?notice=mfa_off")
    _, status = await site.api.call("GET", f"/v1/accounts/{staff}/mfa", expect=200)
    assert status["enabled"] is False


async def test_without_javascript_in_dutch(site, upstream, browser):
    company_id, admin_id = await company_with_admin(site, locale="nl", name="Zonder JS BV")
    staff = await account_in(site, company_id, first="Jan", last="Jansen")
    await site.api.enroll(staff)
    ctx = await browser.new_context(java_script_enabled=False, locale="en-GB")
    try:
        page = await ctx.new_page()
        await open_admin(site, upstream, page, company_id, admin_id)
        assert await page.locator("h1").inner_text() == "Medewerkers"
        await page.get_by_role("link", name="Jan Jansen").click()
        await page.wait_for_url(f"**/{staff}")
        assert await page.get_by_role("heading", name="Persoonlijke gegevens").count() == 1
        await page.get_by_role("button", name="MFA verplichten voor deze medewerker").click()
        await page.wait_for_url("**?notice=personal_on")
        assert "direct het instelscherm" in await page.locator(".message.notice").inner_text()
        warning = await page.locator("#disable-refused").inner_text()
        assert "Dit kan alleen als de multifactor authenticatie niet door de beheerder verplicht is." in warning
        await page.get_by_role("button", name="MFA niet langer verplichten voor deze medewerker").click()
        await page.wait_for_url("**?notice=personal_off")
        await page.get_by_role("button", name="MFA uitschakelen").click()
        await page.wait_for_url("**?notice=mfa_off")
        assert await page.locator("#employee-status").inner_text() == "Uit"
        assert await page.locator("html").get_attribute("lang") == "nl"
        await page.goto(f"{site.base}/mfa/admin/employees?lang=en")
        assert await page.locator("h1").inner_text() == "Employees"
    finally:
        await ctx.close()
    _, status = await site.api.call("GET", f"/v1/accounts/{staff}/mfa", expect=200)
    assert status["enabled"] is False and status["forced"] is False


async def test_the_admin_pages_are_axe_clean_in_dutch(site, upstream, page):
    company_id, admin_id = await company_with_admin(site, locale="nl", required=True)
    staff = await account_in(site, company_id)
    await site.api.enroll(staff)
    await open_admin(site, upstream, page, company_id, admin_id)
    await check_axe(page)
    await page.goto(f"{site.base}/mfa/admin/employees/{staff}")
    assert await page.get_by_role("button", name="MFA uitschakelen").is_disabled()
    await check_axe(page)


def test_the_tabs_rules_state_reason_search_and_cursor():
    from services.auth.handlers import admin
    from services.auth.store import EmployeeRow

    at = datetime.now(UTC)
    later, earlier = at + timedelta(minutes=1), at - timedelta(minutes=1)
    assert admin.mfa_state(True, None, later, at) == "locked"
    assert admin.mfa_state(True, None, earlier, at) == "on"
    assert admin.mfa_state(False, later, None, at) == "pending"
    assert admin.mfa_state(False, earlier, None, at) == "off"  # an expired enrolment is no longer pending
    assert [admin.forced_by(c, p) for c, p in ((True, True), (True, False), (False, True), (False, False))] == [
        "both", "company", "personal", None]
    assert admin.search_pattern("  Ada   Love ") == "%Ada Love%"
    assert admin.search_pattern("50%_a\\b") == "%50\\%\\_a\\\\b%"
    assert admin.search_pattern("   ") is None
    row = EmployeeRow("acct-1", "ada@example.com", "", "", "employee", False, False, False, None, None, None)
    assert admin.decode_cursor(admin.encode_cursor(row)) == ("ada@example.com", "acct-1")
    for bad in ("", "%%%", "bnVsbA", "WzEsMl0", "x" * 900):  # null, [1,2], too long
        assert admin.decode_cursor(bad) is None


def test_every_admin_key_is_in_both_languages():
    from services.auth import admin_pages
    from services.common import i18n

    root = Path(__file__).resolve().parents[2]
    code = (root / "services" / "auth" / "admin_pages.py").read_text(encoding="utf-8")
    templates = "".join(p.read_text(encoding="utf-8") for p in (root / "services" / "auth" / "templates").glob("admin_*.html"))
    used = set(re.findall(r"""["']((?:admin|error)\.[a-z_.]+[a-z_])["']""", code + templates))
    used |= {f"admin.notice.{n}" for n in admin_pages.NOTICES}
    used |= {f"admin.forced_reason.{by}" for by in ("company", "personal", "both")}
    used |= {f"error.{code}.{part}" for code in ("not_company_admin", "account_not_found") for part in ("title", "body")}
    assert len(used) > 50
    catalogue = i18n.Catalogue.load()
    for lang in i18n.LOCALES:
        assert not used - catalogue.keys(lang), f"missing in {lang}: {sorted(used - catalogue.keys(lang))}"


@pytest.mark.parametrize("lang", ["en", "nl"])
async def test_every_admin_page(site, upstream, browser, lang):
    """Each admin page in `lang`, axe-checked; `make screenshots` (MFA_SCREENSHOTS) saves them as PNGs."""
    company_id, admin_id = await company_with_admin(site, name="Acme Logistics", locale=lang)
    staff = {}
    for first, last, required in (("Ada", "Lovelace", False), ("Brian", "Kernighan", True), ("Carla", "Mendes", False),
                                  ("Dirk", "de Vries", False), ("Eva", "Jansen", False)):
        address = f"{first}.{last.replace(' ', '')}@acme.example".lower()
        staff[first] = await account_in(site, company_id, first=first, last=last, required=required, email=address)
    for first in ("Ada", "Brian", "Dirk"):
        await site.api.enroll(staff[first])
    await site.api.call("POST", f"/v1/accounts/{staff['Carla']}/mfa/enrollment", expect=201)
    async with site.runtime.pool.acquire() as conn:
        await conn.execute("UPDATE auth.accounts SET locked_until = $2 WHERE account_id = $1", staff["Dirk"],
                           datetime.now(UTC) + timedelta(minutes=8))
    await _bulk(site, company_id, 10, "acme.example")
    ctx = await browser.new_context(viewport={"width": 1100, "height": 900}, locale="en-GB")
    seen: list[str] = []
    try:
        page = await ctx.new_page()
        await open_admin(site, upstream, page, company_id, admin_id)
        await show(page, "admin-employees", lang, seen)
        await page.locator("#q").fill("Kernighan")
        await page.locator("form.search button").click()
        await page.wait_for_url("**q=Kernighan")
        await show(page, "admin-employees-search", lang, seen)
        await page.goto(f"{site.base}/mfa/admin/employees/{staff['Ada']}")
        await show(page, "admin-summary", lang, seen)
        await page.goto(f"{site.base}/mfa/admin/employees/{staff['Brian']}")
        await show(page, "admin-summary-forced", lang, seen)
        await page.goto(f"{site.base}/mfa/admin/employees")
        await page.locator('form[action="/mfa/admin/require"] button').click()
        await page.wait_for_url("**notice=company_on")
        await show(page, "admin-company-required", lang, seen)
        await site.api.call("PUT", f"/v1/accounts/{admin_id}", {
            "company_id": company_id, "email": f"{admin_id}@example.com", "first_name": "Grace",
            "last_name": "Hopper", "role": "employee", "mfa_required": False, "locale": lang}, expect=200)
        await page.reload()
        await show(page, "admin-error-not-admin", lang, seen)
    finally:
        await ctx.close()
    assert len(seen) == 6


async def test_the_personal_switch_does_not_undo_an_upstream_change_made_meanwhile(site):
    """The switch reads and writes under the account's row lock: an upstream rename that holds the
    lock first is kept, not overwritten with the name the switch would have read before it."""
    import asyncio

    from services.auth.api import AUTH
    from services.auth.handlers import directory
    from services.auth.handlers.context import Caller
    from services.common.events import Actor

    from ..conftest import wait_for

    company_id, admin_id = await company_with_admin(site)
    staff = await account_in(site, company_id, first="Old", last="Name")
    auth = site.api.client.server.app[AUTH]
    async with site.runtime.pool.acquire() as upstream_conn:
        tx = upstream_conn.transaction()
        await tx.start()
        await upstream_conn.execute("UPDATE auth.accounts SET first_name = 'New' WHERE account_id = $1", staff)
        switch = asyncio.ensure_future(
            directory.require_for_account(auth, Caller(None, None, Actor("user", admin_id)), staff, True))
        try:
            async def waiting() -> bool:
                async with site.runtime.pool.acquire() as conn:
                    return bool(await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))
            await wait_for(waiting, message="the switch to wait for the account's row lock")
            assert not switch.done()
        finally:
            await tx.commit()
        await switch
    async with site.runtime.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT first_name, mfa_required FROM auth.accounts WHERE account_id = $1", staff)
    assert tuple(row) == ("New", True)
