"""Property tests (hypothesis) for two parsers of outside input: the recovery mail parser and the JSON edge."""

from __future__ import annotations

import json
from email.message import EmailMessage

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import strictjson
from services.common.web import SERVICE_NAME, edge_middleware, read_json
from services.recovery.domain import clean_company, clean_name, valid_email
from services.recovery.mailparse import find_addresses, html_to_text, parse_mail

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# ---- the mail parser


def _check_request(request) -> None:
    """What every parse result must be, whatever came in."""
    assert request.channel == "email"
    assert request.email == "" or valid_email(request.email), request.email
    assert request.first_name == "" or clean_name(request.first_name) == request.first_name
    assert request.last_name == "" or clean_name(request.last_name) == request.last_name
    assert request.company_name == "" or clean_company(request.company_name) == request.company_name
    assert all(isinstance(p, str) and p for p in request.problems)


@PROPERTY
@given(st.binary(max_size=4000))
def test_parse_mail_never_raises_on_any_bytes(raw):
    _check_request(parse_mail(raw, mailbox=("helpdesk@mfa.localhost",), envelope_sender="a@b.example"))


text_lines = st.lists(st.one_of(
    st.text(max_size=80),
    st.builds(lambda label, value: f"{label}: {value}",
              st.sampled_from(["Email", "First name", "Last name", "Name", "Company", "Subject", "From"]),
              st.text(max_size=60)),
    st.emails().map(lambda e: f"my account is {e}"),
    st.builds(lambda name: f"My name is {name}", st.text(max_size=40)),
), max_size=20).map("\n".join)


@PROPERTY
@given(subject=st.text(max_size=200), body=text_lines, html=st.one_of(st.none(), st.text(max_size=500)),
       attach=st.one_of(st.none(), st.binary(max_size=500)))
def test_parse_mail_reads_any_well_formed_mail(subject, body, html, attach):
    msg = EmailMessage()
    msg["From"] = "Jane Doe <jane@acme.example>"
    msg["To"] = "helpdesk@mfa.localhost"
    try:
        msg["Subject"] = subject
    except Exception:  # the stdlib refuses some header values outright: not a mail anyone can send
        msg["Subject"] = "Resetting MFA authenticator (Acme)"
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    if attach is not None:
        msg.add_attachment(attach, maintype="image", subtype="jpeg", filename="a.jpg")
    request = parse_mail(msg.as_bytes(), mailbox=("helpdesk@mfa.localhost",), envelope_sender="jane@acme.example")
    _check_request(request)


@PROPERTY
@given(st.text(max_size=3000))
def test_addresses_found_are_in_the_text_and_plausible(text):
    for address in find_addresses(text):
        assert address in text
        local, _, domain = address.partition("@")
        assert 1 <= len(local) <= 64 and "." in domain


@PROPERTY
@given(st.emails(), st.text(alphabet=" ,;:<>()\n", min_size=1, max_size=5),
       st.text(alphabet=" ,;:<>()\n", min_size=1, max_size=5))
def test_a_plain_address_written_in_text_is_found(address, before, after):
    local, _, domain = address.partition("@")
    plain = all(c.isascii() and (c.isalnum() or c in "._%+'-") for c in local) and all(
        c.isascii() and (c.isalnum() or c in ".-") for c in domain)
    if plain and ".." not in domain and not domain.startswith(".") and "." in domain:
        assert address in list(find_addresses(f"x{before}{address}{after}x"))


@PROPERTY
@given(st.text(max_size=2000))
def test_html_to_text_never_raises_and_keeps_no_tags(html):
    text = html_to_text(html)
    assert isinstance(text, str)
    assert "<p>" not in text.casefold() or "<p>" in html.casefold()


# ---- the JSON edge


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def _unstorable(value) -> bool:
    return strictjson.unstorable_path(value) is not None


@PROPERTY
@given(json_values)
def test_strictjson_round_trips_what_it_accepts_and_names_what_it_refuses(value):
    raw = json.dumps(value).encode()
    if _unstorable(value):
        with pytest.raises(strictjson.UnstorableText):
            strictjson.loads(raw)
    else:
        assert strictjson.loads(raw) == value


@PROPERTY
@given(st.binary(max_size=300))
def test_strictjson_raises_only_value_error(raw):
    try:
        strictjson.loads(raw)
    except ValueError:
        pass


@pytest.fixture(scope="module")
async def json_edge():
    """The shared edge (middleware + read_json) on a route of its own, outside /v1 so no key is needed."""
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await read_json(request))

    app = web.Application(middlewares=[edge_middleware])
    app[SERVICE_NAME] = "fuzz"
    app.router.add_post("/echo", echo)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@PROPERTY
@given(body=st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode())))
async def test_read_json_answers_any_body_with_the_object_or_a_400(json_edge, body):
    resp = await json_edge.post("/echo", data=body, headers={"Content-Type": "application/json"})
    assert resp.status in (200, 400), await resp.text()
    if resp.status == 400:
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] in ("invalid_json", "invalid_characters")
    else:
        echoed = await resp.json()
        assert isinstance(echoed, dict) and echoed == (strictjson.loads(body) if body.strip() else {})
