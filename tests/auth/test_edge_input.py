"""Bad input at the HTTP edge gets problem+json with a stable code, never a 500, and saves nothing.

Real HTTP against the auth app (PostgreSQL, RabbitMQ, outbox relay). Requests whose
X-Correlation-ID is not plain ASCII (even not UTF-8) are written byte for byte over a socket.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import aio_pika
import pytest

from services.auth import domain
from services.common.errors import BadRequest
from services.common.events import CONTENT_TYPE, encode, new_event

from .conftest import oathtool

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


async def raw_request(client, key: str, method: str, path: str, body: bytes = b"",
                      extra_headers: bytes = b"") -> tuple[int, dict[str, bytes], bytes]:
    """One HTTP/1.1 request written byte for byte; the status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + extra_headers + b"\r\n" + body
        )
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)  # Connection: close: EOF ends the response
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip()
    return int(status_line.split()[1]), headers, payload


async def company_count(runtime, company_id: str) -> int:
    return await runtime.pool.fetchval("SELECT count(*) FROM auth.companies WHERE company_id = $1", company_id)


# ---- U+0000, lone surrogates, deep nesting ----------------------------------------------

@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"name": "Acme\\u0000", "mfa_required": false}', "name"),
        (b'{"name": "\\ud800", "mfa_required": false}', "name"),
        (b'{"name": "x\\udc00y", "mfa_required": false}', "name"),
        (b'{"name": "\\ude00\\ud83d", "mfa_required": false}', "name"),  # a pair in the wrong order
        (b'{"name": "\xed\xa0\x80", "mfa_required": false}', "name"),  # a surrogate as raw UTF-8 bytes
        (b'{"name": "A", "mfa_required": false, "x\\u0000": 1}', "x\ufffd"),  # in a member name
    ],
    ids=["nul", "high-surrogate", "low-surrogate", "reversed-pair", "raw-surrogate-bytes", "nul-in-key"],
)
async def test_nul_and_lone_surrogates_are_refused_before_the_database(api, runtime, body, field):
    company = f"co-{uuid.uuid4().hex[:10]}"
    status, problem = await api.call("PUT", f"/v1/companies/{company}", raw=body)
    assert (status, problem["code"]) == (400, "invalid_characters"), problem
    assert problem["field"] == field and problem["type"] == "urn:mfa:problem:invalid_characters"
    assert await company_count(runtime, company) == 0


async def test_nul_in_an_account_names_the_field_while_paired_surrogates_are_kept(api, runtime):
    company = f"co-{uuid.uuid4().hex[:10]}"
    # An emoji as a JSON surrogate pair, an accent, and a literal backslash-u0000 (six plain characters).
    body = b'{"name": "Caf\\u00e9 \\ud83d\\ude00 \\\\u0000", "mfa_required": false}'
    await api.call("PUT", f"/v1/companies/{company}", raw=body, expect=201)
    name = await runtime.pool.fetchval("SELECT name FROM auth.companies WHERE company_id = $1", company)
    assert name == "Caf\u00e9 \U0001F600 \\u0000"
    account = f"acct-{uuid.uuid4().hex[:10]}"
    person = {"company_id": company, "email": f"{account}@example.com", "first_name": "Ada\u0000",
              "last_name": "Lovelace \U0001F600", "role": "employee", "mfa_required": False}
    status, problem = await api.call("PUT", f"/v1/accounts/{account}", raw=json.dumps(person).encode())
    assert (status, problem["code"], problem["field"]) == (400, "invalid_characters", "first_name"), problem
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.accounts WHERE account_id = $1", account) == 0
    await api.call("PUT", f"/v1/accounts/{account}", {**person, "first_name": "Ada"}, expect=201)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"name": ' + b"[" * 20_000 + b"]" * 20_000 + b', "mfa_required": false}',
        b'{"name": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b', "mfa_required": false}',
    ],
    ids=["top-level", "array-in-member", "object-in-member"],
)
async def test_deeply_nested_json_is_invalid_json_and_the_app_keeps_serving(api, runtime, body):
    company = f"co-{uuid.uuid4().hex[:10]}"
    status, problem = await api.call("PUT", f"/v1/companies/{company}", raw=body)
    assert (status, problem["code"]) == (400, "invalid_json"), problem
    assert await company_count(runtime, company) == 0
    await api.call("PUT", f"/v1/companies/{company}", {"name": "After", "mfa_required": False}, expect=201)


@pytest.mark.parametrize("body", [b'{"name": "A", "mfa_required": NaN}', b'{"name": "A", "mfa_required": 1e400}'],
                         ids=["nan", "overflow"])
async def test_non_json_numbers_are_invalid_json(api, body):
    status, problem = await api.call("PUT", f"/v1/companies/co-{uuid.uuid4().hex[:10]}", raw=body)
    assert (status, problem["code"]) == (400, "invalid_json"), problem


# ---- schema violations: one code each ---------------------------------------------------

async def test_missing_unknown_and_mistyped_members_have_their_own_codes(api, runtime):
    company = await api.company()
    account = f"acct-{uuid.uuid4().hex[:10]}"
    good = {"company_id": company, "email": f"{account}@example.com", "first_name": "Ada",
            "last_name": "Lovelace", "role": "employee", "mfa_required": False}
    without_email = {k: v for k, v in good.items() if k != "email"}
    cases = [
        (without_email, "missing_field", "email"),
        ({**good, "nickname": "ada"}, "unknown_field", "nickname"),
        ({**good, "mfa_required": "yes"}, "wrong_type", "mfa_required"),
        ({**good, "first_name": ["Ada"]}, "wrong_type", "first_name"),
        ({**good, "role": "boss"}, "validation_failed", "role"),  # enum: none of the three
        ({**good, "first_name": "A" * 201}, "validation_failed", "first_name"),  # maxLength
    ]
    for body, code, field in cases:
        status, problem = await api.call("PUT", f"/v1/accounts/{account}", body)
        assert (status, problem["code"], problem.get("field")) == (400, code, field), (body, problem)
        assert problem["type"] == f"urn:mfa:problem:{code}" and problem["detail"]
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.accounts WHERE account_id = $1", account) == 0


# ---- X-Correlation-ID --------------------------------------------------------------------

async def test_a_plain_correlation_id_of_up_to_100_characters_is_kept_end_to_end(client, key, tap):
    plain = "trace-1:abc/DEF+x=y@z_w." + uuid.uuid4().hex
    for sent, kept in ((plain, True), (plain.ljust(100, "x"), True), (plain.ljust(101, "x"), False)):
        company = f"co-{uuid.uuid4().hex[:10]}"
        status, headers, _ = await raw_request(client, key, "PUT", f"/v1/companies/{company}",
                                               b'{"name": "A", "mfa_required": false}',
                                               f"X-Correlation-ID: {sent}\r\n".encode())
        echoed = headers["x-correlation-id"].decode()
        assert status == 201 and (echoed == sent if kept else UUID4.fullmatch(echoed)), (sent, echoed)
        event = (await tap.wait(company, "CompanyUpserted"))[0]
        assert event["correlationid"] == echoed


@pytest.mark.parametrize(
    "value",
    [
        "€".encode() * 100,  # 100 characters, 300 bytes: more than an AMQP property holds
        b"\xff\xfeid",  # not UTF-8: aiohttp hands it over surrogate-escaped
        "caf\u00e9".encode(),
        b"a\tb",
        b"a b",
    ],
    ids=["euro-x100", "not-utf8", "non-ascii", "tab", "space"],
)
async def test_an_odd_correlation_id_is_replaced_and_the_request_still_runs(client, key, tap, runtime, value):
    company = f"co-{uuid.uuid4().hex[:10]}"
    status, headers, payload = await raw_request(client, key, "PUT", f"/v1/companies/{company}",
                                                 b'{"name": "A", "mfa_required": false}',
                                                 b"X-Correlation-ID: " + value + b"\r\n")
    assert status == 201, payload
    echoed = headers["x-correlation-id"].decode("ascii", "replace")
    assert UUID4.fullmatch(echoed), echoed
    assert await company_count(runtime, company) == 1
    # The event reaches the bus with the replacement: the relay was not held up by the value sent.
    event = (await tap.wait(company, "CompanyUpserted"))[0]
    assert event["correlationid"] == echoed
    # A problem body carries the replacement too.
    status, headers, payload = await raw_request(client, key, "PUT", f"/v1/companies/{company}", b"{",
                                                 b"X-Correlation-ID: " + value + b"\r\n")
    problem = json.loads(payload)
    assert (status, problem["code"]) == (400, "invalid_json")
    assert UUID4.fullmatch(problem["correlation_id"]) and headers["x-correlation-id"].decode() == problem["correlation_id"]


@pytest.mark.parametrize("correlation_id", ["c" * 300, "€" * 90], ids=["300-ascii", "270-bytes-utf8"])
async def test_a_long_correlation_id_from_upstream_does_not_hold_up_the_outbox(api, runtime, tap, correlation_id):
    """Any string is a valid `correlationid` on an upstream event; auth carries it into the events it causes."""
    company = await api.company(required=True)
    account = await api.account(company)
    login_id = f"lg-{uuid.uuid4().hex[:8]}"
    upstream = new_event("LoginAttempted", {"login_id": login_id, "account_id": account}, source="/upstream/hr",
                         subject=account, company_id=company, correlation_id=correlation_id)
    # Published by upstream's own means (not an outbox), without the AMQP correlation_id property.
    await runtime.broker.exchange.publish(
        aio_pika.Message(encode(upstream), content_type=CONTENT_TYPE, message_id=upstream["id"]),
        routing_key="LoginAttempted",
    )
    issued = await tap.wait(account, "LoginChallengeIssued", timeout=15)
    assert issued[0]["correlationid"] == correlation_id
    # And the relay still publishes what comes after.
    later = await api.company()
    await tap.wait(later, "CompanyUpserted")


# ---- codes and e-mail addresses ----------------------------------------------------------

@pytest.mark.parametrize("code", ["\u0661\u0662\u0663\u0664\u0665\u0666", "\u0967\u0968\u0969\u096a\u096b\u096c",
                                  "12345\uff16"], ids=["arabic-indic", "devanagari", "fullwidth"])
async def test_non_ascii_digits_are_a_format_error_and_use_up_no_attempt(api, code):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    verify = f"/v1/logins/{login['login_id']}/verify"
    _, problem = await api.call("POST", verify, {"method": "totp", "code": code}, expect=400)
    assert problem["code"] == "invalid_code_format"
    wrong = str((int(oathtool(secret)) + 500_000) % 10**6).zfill(6)
    _, failed = await api.call("POST", verify, {"method": "totp", "code": wrong}, expect=401)
    assert failed["attempts_left"] == domain.MAX_LOGIN_ATTEMPTS - 1


@pytest.mark.parametrize("address", ["a\x00b@example.com", "a\x01b@example.com", "ab\x1b@example.com",
                                     "a\x7fb@example.com", "a\x9bb@example.com"])
def test_control_characters_make_an_invalid_email(address):
    with pytest.raises(BadRequest) as caught:
        domain.check_email(address)
    assert caught.value.code == "invalid_email"


async def test_a_backup_email_with_a_control_character_is_refused_over_http(api, runtime):
    account = await api.account(await api.company())
    _, problem = await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": "a\x01b@example.org"}, expect=400)
    assert problem["code"] == "invalid_email"
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.backup_emails WHERE account_id = $1", account) == 0
    await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": "jos\u00e9@example.org"}, expect=202)


async def test_an_international_account_email_is_accepted_and_compared_as_one_mailbox(api):
    company = await api.company()
    account = f"acct-{uuid.uuid4().hex[:10]}"
    _, created = await api.call("PUT", f"/v1/accounts/{account}", {
        "company_id": company, "email": "jörg@müller.de", "first_name": "Jörg", "last_name": "Müller",
        "role": "employee", "mfa_required": False}, expect=201)
    assert created["email"] == "jörg@müller.de"
    _, same = await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": "JÖRG@xn--mller-kva.de"}, expect=400)
    assert same["code"] == "same_as_login_email"
