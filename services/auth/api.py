"""The auth HTTP API (JSON in, JSON out); errors are mapped to problem+json by the common edge."""

from __future__ import annotations

import io

import segno
from aiohttp import web

from ..common.errors import BadRequest, NotFound
from ..common.events import Actor
from ..common.web import compile_schema as schema
from ..common.web import current_correlation_id, json_response, read_json, require_role
from .handlers import backup_email, directory, disable, enrolment, logins, prompt
from .handlers.context import Auth, Caller
from .handlers.prompt import PageConfig
from .tokens import JWKS_MAX_AGE

AUTH = web.AppKey("auth", Auth)
PAGE_CONFIG = web.AppKey("page_config", PageConfig)

_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._:@-]+$"}
_NAME = {"type": "string", "maxLength": 200}
_CODE = {"type": "string", "minLength": 1, "maxLength": 64}


def _obj(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": required}


COMPANY = schema(_obj({"name": {"type": "string", "minLength": 1, "maxLength": 200}, "mfa_required": {"type": "boolean"}},
                      ["name", "mfa_required"]))
ACCOUNT = schema(_obj({
    "company_id": _ID, "email": {"type": "string", "minLength": 3, "maxLength": 254}, "first_name": _NAME,
    "last_name": _NAME, "role": {"enum": ["employee", "admin"]}, "mfa_required": {"type": "boolean"},
    "locale": {"type": "string", "maxLength": 20},
    "time_zone": {"type": "string", "minLength": 1, "maxLength": 64},
}, ["company_id", "email", "first_name", "last_name", "role", "mfa_required"]))
CONFIRM = schema(_obj({"code": _CODE, "login_id": _ID}, ["code"]))
BACKUP_EMAIL = schema(_obj({"email": {"type": "string", "minLength": 3, "maxLength": 254}}, ["email"]))
TOKEN = schema(_obj({"token": {"type": "string", "minLength": 20, "maxLength": 200}}, ["token"]))
DISABLE = schema(_obj({"backup_code": _CODE}, ["backup_code"]))
ADMIN_DISABLE = schema(_obj({"actor_account_id": _ID}, ["actor_account_id"]))
LOGIN = schema(_obj({"account_id": _ID, "login_id": _ID, "ip": {"type": "string", "maxLength": 64},
                     "user_agent": {"type": "string", "maxLength": 512},
                     "return_to": {"type": "string", "minLength": 1, "maxLength": 2048},
                     "state": {"type": "string", "maxLength": 512}}, ["account_id"]))
PORTAL = schema(_obj({"return_to": {"type": "string", "minLength": 1, "maxLength": 2048}}, ["return_to"]))
VERIFY = schema(_obj({"method": {"enum": ["totp", "backup_code"]}, "code": _CODE}, ["method", "code"]))
EMPTY = schema(_obj({}, []))

_check_id = schema(_ID)


def _id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    try:
        _check_id(value)
    except Exception as exc:
        raise NotFound(f"No {name.replace('_', ' ')} {value!r}.", code=f"{name.removesuffix('_id')}_not_found") from exc
    return value


def _private(data: dict, status: int = 200) -> web.Response:
    """A JSON answer that carries a secret (a TOTP secret, backup codes, an assertion): never cached."""
    response = json_response(data, status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _ctx(request: web.Request) -> tuple[Auth, Caller]:
    principal = require_role(request, "service")
    caller = Caller(principal, current_correlation_id(), Actor("api_key", principal.key_id))
    return request.app[AUTH], caller


async def put_company(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, COMPANY)
    result = await directory.upsert_company(auth, caller, {"company_id": _id(request, "company_id"), **body})
    return json_response(result, 201 if result.pop("created") else 200)


async def put_account(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, ACCOUNT)
    result = await directory.upsert_account(auth, caller, {"account_id": _id(request, "account_id"), **body})
    return json_response(result, 201 if result.pop("created") else 200)


async def get_mfa(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    return json_response(await directory.get_status(auth, caller, _id(request, "account_id")))


async def start_enrollment(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    await read_json(request, EMPTY)
    return _private(await enrolment.start_enrollment(auth, caller, _id(request, "account_id")), 201)


async def qr_svg(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    uri = await enrolment.pending_uri(auth, caller, _id(request, "account_id"))
    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="svg", scale=5, border=4, title="Scan with your authenticator app")
    return web.Response(body=buf.getvalue(), content_type="image/svg+xml", headers={"Cache-Control": "no-store"})


async def qr_png(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    uri = await enrolment.pending_uri(auth, caller, _id(request, "account_id"))
    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="png", scale=6, border=4)
    return web.Response(body=buf.getvalue(), content_type="image/png", headers={"Cache-Control": "no-store"})


async def confirm_enrollment(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, CONFIRM)
    result = await enrolment.confirm_enrollment(auth, caller, _id(request, "account_id"), body["code"], body.get("login_id"))
    return _private(result, 201)


async def regenerate_codes(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    await read_json(request, EMPTY)
    return _private(await enrolment.regenerate_backup_codes(auth, caller, _id(request, "account_id")), 201)


async def put_backup_email(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, BACKUP_EMAIL)
    return json_response(await backup_email.set_backup_email(auth, caller, _id(request, "account_id"), body["email"]), 202)


async def confirm_backup_email(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, TOKEN)
    return json_response(await backup_email.confirm_backup_email(auth, caller, body["token"]))


async def disable_with_code(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, DISABLE)
    return json_response(await disable.disable_with_backup_code(auth, caller, _id(request, "account_id"), body["backup_code"]))


async def admin_disable(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, ADMIN_DISABLE)
    return json_response(await disable.admin_disable(auth, caller, _id(request, "account_id"), body["actor_account_id"]))


async def create_login(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, LOGIN)
    return_to, state = body.pop("return_to", None), body.pop("state", None)
    config = request.app[PAGE_CONFIG]
    if return_to is not None:
        prompt.check_return_to(config, return_to)  # refused before any login is started
    elif state is not None:
        raise BadRequest("state is only sent with return_to.", code="missing_field", field="return_to")
    result = await logins.start_login(auth, caller, body)
    if return_to is not None and result["decision"] in ("verify", "enroll") and result["status"] == "pending":
        result["prompt_url"] = await prompt.issue_prompt(auth, config, result, return_to, state)
    return _private(result, 201)  # `allow` carries an assertion, `prompt_url` a single-use token


async def get_login(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    return _private(await prompt.get_login(auth, caller, _id(request, "login_id")))


async def create_portal_session(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, PORTAL)
    result = await prompt.issue_portal(auth, caller, request.app[PAGE_CONFIG], _id(request, "account_id"),
                                       body["return_to"])
    return _private(result, 201)


async def verify_login(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, VERIFY)
    return _private(await logins.verify_login(auth, caller, _id(request, "login_id"), body["method"], body["code"]))


async def login_link(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    await read_json(request, EMPTY)
    return json_response(await logins.send_login_link(auth, caller, _id(request, "login_id")), 202)


async def redeem_link(request: web.Request) -> web.Response:
    auth, caller = _ctx(request)
    body = await read_json(request, TOKEN)
    return _private(await logins.redeem_login_link(auth, caller, body["token"]))


async def jwks(request: web.Request) -> web.Response:
    response = json_response(request.app[AUTH].signer.jwks)
    # A new key is published PROPAGATION (longer than this) before it signs, so caches stay right.
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    return response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/companies/{company_id}", put_company)
    r.add_put("/v1/accounts/{account_id}", put_account)
    r.add_get("/v1/accounts/{account_id}/mfa", get_mfa)
    r.add_delete("/v1/accounts/{account_id}/mfa", admin_disable)
    r.add_post("/v1/accounts/{account_id}/mfa/enrollment", start_enrollment)
    r.add_get("/v1/accounts/{account_id}/mfa/enrollment/qr.svg", qr_svg)
    r.add_get("/v1/accounts/{account_id}/mfa/enrollment/qr.png", qr_png)
    r.add_post("/v1/accounts/{account_id}/mfa/enrollment/confirm", confirm_enrollment)
    r.add_post("/v1/accounts/{account_id}/mfa/backup-codes", regenerate_codes)
    r.add_post("/v1/accounts/{account_id}/mfa/disable", disable_with_code)
    r.add_put("/v1/accounts/{account_id}/backup-email", put_backup_email)
    r.add_post("/v1/backup-email/confirm", confirm_backup_email)
    r.add_post("/v1/logins", create_login)
    r.add_get("/v1/logins/{login_id}", get_login)
    r.add_post("/v1/accounts/{account_id}/portal-sessions", create_portal_session)
    r.add_post("/v1/logins/{login_id}/verify", verify_login)
    r.add_post("/v1/logins/{login_id}/backup-email", login_link)
    r.add_post("/v1/login-links/redeem", redeem_link)
    r.add_get("/.well-known/jwks.json", jwks)
