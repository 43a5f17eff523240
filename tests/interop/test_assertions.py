"""A real assertion from the running service verifies with PyJWT, joserfc and node `jose`, each used
as its documentation shows (the remote JWKS, EdDSA) plus issuer, audience and expiry checks; each
refuses another upstream's assertion and an expired one."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import jwt as pyjwt
import pytest
from joserfc import jwt as josejwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError
from joserfc.jwk import KeySet

from services.auth.tokens import Signer
from services.common.crypto import Keyring
from services.common.db import create_pool

from .conftest import unique

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # joserfc's note on the RFC 9864 name


async def _call(http: aiohttp.ClientSession, method: str, url: str, key: str, body: dict | None = None) -> dict:
    async with http.request(method, url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        data = await resp.json(content_type=None)
        assert resp.status < 300, (resp.status, data)
        return data


async def login_assertion(stack, key: str) -> tuple[str, str, str]:
    """(assertion, company id, account id) of an `allow` login, through the stack's HTTP API."""
    company, account = unique("co"), unique("acct")
    base = stack.url()
    async with aiohttp.ClientSession() as http:
        await _call(http, "PUT", f"{base}/v1/companies/{company}", key, {"name": "Acme", "mfa_required": False})
        await _call(http, "PUT", f"{base}/v1/accounts/{account}", key,
                    {"company_id": company, "email": f"{account}@example.com", "first_name": "Ada",
                     "last_name": "Lovelace", "role": "employee", "mfa_required": False})
        login = await _call(http, "POST", f"{base}/v1/logins", key, {"account_id": account})
    assert login["decision"] == "allow"
    return login["assertion"], company, account


@pytest.fixture(scope="module")
async def issued(stack):
    """A default key's assertion, one for audience app-a, and an expired one signed with the live key."""
    default_key = await stack.api_key("--role", "service")
    audience_key = await stack.api_key("--role", "service", "--audience", "https://app-a.example")
    token, company, account = await login_assertion(stack, default_key)
    token_a, _, _ = await login_assertion(stack, audience_key)
    pool = await create_pool(stack.env["MFA_DATABASE_URL"], min_size=1, max_size=1)
    try:
        # The service's own key (same database, same secret keys), with a lifetime already over.
        old = await Signer(stack.url(), ttl=-60).load(pool, Keyring(_settings_keys(stack)))
    finally:
        await pool.close()
    expired = old.sign(account_id=account, company_id=company, login_id="expired", amr=["pwd"])
    return {"token": token, "company": company, "account": account, "token_a": token_a, "expired": expired}


def _settings_keys(stack):
    from services.common.config import Settings

    return Settings.from_env(stack.env).secret_keys


def jwks_url(stack) -> str:
    return f"{stack.url()}/.well-known/jwks.json"


async def test_jwks_names_eddsa_and_may_be_cached(stack):
    async with aiohttp.ClientSession() as http, http.get(jwks_url(stack)) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "public, max-age=300"
        keys = (await resp.json())["keys"]
    assert keys and all(k["alg"] == "EdDSA" and k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in keys)
    assert all("d" not in k for k in keys)


async def test_claims_name_the_issuer_url_and_the_company_as_default_audience(stack, issued):
    claims = pyjwt.decode(issued["token"], options={"verify_signature": False})
    header = pyjwt.get_unverified_header(issued["token"])
    assert header["alg"] == "EdDSA" and header["typ"] == "JWT"
    assert claims["iss"] == stack.url() == stack.env["MFA_PUBLIC_URL"]
    assert claims["aud"] == issued["company"] and claims["company_id"] == issued["company"]
    assert claims["sub"] == issued["account"] and claims["exp"] - claims["iat"] == 300
    assert pyjwt.decode(issued["token_a"], options={"verify_signature": False})["aud"] == "https://app-a.example"


def _pyjwt(url: str, token: str, issuer: str, audience: str) -> dict:
    client = pyjwt.PyJWKClient(url)
    signing_key = client.get_signing_key_from_jwt(token)
    return pyjwt.decode(token, signing_key.key, algorithms=["EdDSA"], issuer=issuer, audience=audience,
                        options={"require": ["exp", "iat", "iss", "aud", "sub"]})


async def test_pyjwt_with_pyjwkclient(stack, issued):
    url, iss = jwks_url(stack), stack.url()
    # PyJWKClient fetches with urllib, blocking: off the event loop that runs nothing else here.
    claims = await asyncio.to_thread(_pyjwt, url, issued["token"], iss, issued["company"])
    assert claims["sub"] == issued["account"]
    assert (await asyncio.to_thread(_pyjwt, url, issued["token_a"], iss, "https://app-a.example"))["aud"]
    with pytest.raises(pyjwt.InvalidAudienceError):
        await asyncio.to_thread(_pyjwt, url, issued["token_a"], iss, "https://app-b.example")
    with pytest.raises(pyjwt.InvalidIssuerError):
        await asyncio.to_thread(_pyjwt, url, issued["token"], "https://other-issuer.example", issued["company"])
    with pytest.raises(pyjwt.ExpiredSignatureError):
        await asyncio.to_thread(_pyjwt, url, issued["expired"], iss, issued["company"])


def _joserfc(jwks: dict, token: str, issuer: str, audience: str) -> dict:
    decoded = josejwt.decode(token, KeySet.import_key_set(jwks), algorithms=["EdDSA"])
    josejwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": audience},
        exp={"essential": True}, sub={"essential": True},
    ).validate(decoded.claims)
    return decoded.claims


async def test_joserfc_with_the_fetched_jwks(stack, issued):
    async with aiohttp.ClientSession() as http, http.get(jwks_url(stack)) as resp:
        jwks = await resp.json()
    iss = stack.url()
    assert _joserfc(jwks, issued["token"], iss, issued["company"])["sub"] == issued["account"]
    assert _joserfc(jwks, issued["token_a"], iss, "https://app-a.example")["login_id"]
    with pytest.raises(InvalidClaimError):
        _joserfc(jwks, issued["token_a"], iss, "https://app-b.example")
    with pytest.raises(InvalidClaimError):
        _joserfc(jwks, issued["token"], "https://other-issuer.example", issued["company"])
    with pytest.raises(ExpiredTokenError):
        _joserfc(jwks, issued["expired"], iss, issued["company"])


async def _node(jose_dir, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec("node", str(jose_dir / "verify.mjs"), *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode().strip()


async def test_node_jose_with_create_remote_jwkset(stack, issued, jose_dir):
    url, iss = jwks_url(stack), stack.url()
    code, out, err = await _node(jose_dir, url, issued["token"], iss, issued["company"])
    assert code == 0, err
    verified = json.loads(out)
    assert verified["payload"]["sub"] == issued["account"] and verified["protectedHeader"]["alg"] == "EdDSA"
    assert verified["payload"]["exp"] > time.time()
    code, _, err = await _node(jose_dir, url, issued["token_a"], iss, "https://app-a.example")
    assert code == 0, err
    assert await _node(jose_dir, url, issued["token_a"], iss, "https://app-b.example") == (
        1, "", "ERR_JWT_CLAIM_VALIDATION_FAILED")
    assert await _node(jose_dir, url, issued["token"], "https://other-issuer.example", issued["company"]) == (
        1, "", "ERR_JWT_CLAIM_VALIDATION_FAILED")
    assert await _node(jose_dir, url, issued["expired"], iss, issued["company"]) == (1, "", "ERR_JWT_EXPIRED")


async def test_an_audience_is_only_for_service_keys(stack):
    proc = await asyncio.create_subprocess_exec(
        stack.mfa, "api-key", "create", "--role", "helpdesk", "--audience", "https://x.example",
        env=stack.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 2 and b"only service keys" in err and b"mfa_" not in out


def test_the_issuer_is_mfa_issuer_else_the_public_url():
    from services.common.config import Settings

    assert Settings.from_env({}).issuer_url == "http://127.0.0.1:8081"
    assert Settings.from_env({"MFA_PUBLIC_URL": "https://mfa.example.com/"}).issuer_url == "https://mfa.example.com"
    assert Settings.from_env({"MFA_PUBLIC_URL": "https://a.example", "MFA_ISSUER": "https://id.example"}).issuer_url \
        == "https://id.example"
