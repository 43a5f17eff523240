"""The pages' stylesheet: from memory, under a URL with its version, kept by browsers; pages are not."""

from __future__ import annotations

import re

from services.common.pages import load_static


async def test_the_stylesheet_is_versioned_and_cacheable_while_pages_are_not(site):
    api, client = site.api, site.api.client
    company = await api.company()
    account = await api.account(company)
    await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account, "return_to": "http://127.0.0.1:9/b"},
                              expect=201)
    async with client.get(login["prompt_url"].removeprefix(str(client.make_url("")))) as page:
        html = await page.text()
        assert page.status == 200 and page.headers["Cache-Control"] == "no-store"
    link = re.search(r'<link rel="stylesheet" href="(/mfa/static/pages\.css\?v=([0-9a-f]{16}))">', html)
    assert link is not None, html
    assert link.group(2) == load_static()["pages.css"].version

    async with client.get(link.group(1)) as css:
        body = await css.read()
        assert css.status == 200 and css.content_type == "text/css"
        assert css.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert css.headers["X-Content-Type-Options"] == "nosniff"
        etag = css.headers["ETag"]
    assert b"{" in body
    async with client.get(link.group(1), headers={"If-None-Match": etag}) as unchanged:
        assert unchanged.status == 304 and await unchanged.read() == b""
    # An old version's URL (a page cached before a release) still gets the file, but not for a year.
    async with client.get("/mfa/static/pages.css?v=0000000000000000") as old:
        assert old.status == 200 and old.headers["Cache-Control"] == "public, max-age=300"
    async with client.get("/mfa/static/nothing.css") as missing:
        assert missing.status == 404 and missing.headers["Cache-Control"] == "no-store"
