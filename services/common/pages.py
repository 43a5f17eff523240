"""Plumbing of the hosted pages: templates, language, security headers, CSRF, cookies, return URLs.

Every page lives under `/mfa/` on the service that owns its data. What this module guarantees for
each of them:

- Jinja2 templates with autoescape (`services/common/templates/` holds the layout, each service
  its own `templates/pages/`), texts only from the gettext catalogue (`services.common.i18n`);
- the language: `?lang=` (remembered in a cookie), else the account's locale, else
  `Accept-Language`, else English;
- headers: a Content-Security-Policy without `unsafe-inline` (`frame-ancestors 'none'`,
  `form-action 'self'` plus the one return address a page may send the browser to),
  `X-Frame-Options: DENY`, `Referrer-Policy: same-origin` (a URL never leaks to another site), `Cache-Control: no-store`
  (but the static files, served from memory under URLs with their version, which browsers keep);
- CSRF: every POST carries the field `csrf`, an HMAC of the page's session cookie, and a browser
  that says the request is cross-site (`Sec-Fetch-Site`, `Origin`) is refused before that;
- cookies `HttpOnly`, `SameSite=Lax` and `Secure` when the public URL is https;
- errors become a page in the person's language, never a JSON problem or a stack trace.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from aiohttp import web

from . import i18n
from .errors import MfaError
from .events import parse_time
from .logs import get_logger

log = get_logger("pages")

# Expired page links and sessions are deleted this long after they expire (each service's purge):
# until then a late click on an old link still says "expired" or "used", with the way back.
EXPIRED_KEPT = timedelta(days=7)

PREFIX = "/mfa/"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/mfa/static/"
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".png": "image/png"}
_YEAR = 365 * 86400
COMMON_TEMPLATES = Path(__file__).parent / "templates"
LANG_COOKIE = "mfa_lang"
MAX_FORM = 16 * 1024
_BASE_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)


@dataclass(frozen=True)
class StaticFile:
    """One of the pages' static files, held in memory; `version` (of its content) is its URL's `?v=` and its ETag."""

    body: bytes
    content_type: str
    version: str


def load_static(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """The static files of `folder` by name."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in _STATIC_TYPES:
            body = path.read_bytes()
            files[path.name] = StaticFile(body, _STATIC_TYPES[path.suffix], sha256(body).hexdigest()[:16])
    return files


class PageError(Exception):
    """Stop a page handler and show the error page `key` (texts `error.<key>.title/.body`) with `status`."""

    def __init__(self, status: int, key: str, **values: Any) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        self.values = values


@dataclass
class Pages:
    """The template environment and the keys of one service's pages; lives in the app as `PAGES`."""

    template_dirs: list[Path]
    csrf_key: bytes
    secure_cookies: bool = False
    product_name: str = "MFA"
    public_url: str = ""  # behind a proxy the browser's Origin is this one, not the request's own
    # Pages outside `/mfa/` that get the same headers and error pages (recovery's public `/recover`).
    page_paths: tuple[str, ...] = ()
    catalogue: i18n.Catalogue = field(default_factory=i18n.catalogue)

    def __post_init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([*map(str, self.template_dirs), str(COMMON_TEMPLATES)]),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            # Templates ship with the code: no stat() of every template file on every page.
            auto_reload=False,
        )
        self.static = load_static()

    def static_url(self, name: str) -> str:
        """The URL of a static file with its version: a browser keeps it until the file changes."""
        return f"{STATIC_PREFIX}{name}?v={self.static[name].version}"

    # ---- CSRF and cookies ------------------------------------------------------------------

    def csrf_token(self, session: str) -> str:
        """The form token bound to one session cookie value."""
        mac = hmac.new(self.csrf_key, f"csrf:{session}".encode(), sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, *, max_age: int, path: str = PREFIX) -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="Lax",
                            secure=self.secure_cookies)

    def clear_cookie(self, response: web.StreamResponse, name: str, *, path: str = PREFIX) -> None:
        response.del_cookie(name, path=path, httponly=True, samesite="Lax", secure=self.secure_cookies)

    async def form(self, request: web.Request, session: str | None) -> dict[str, str]:
        """The POSTed form, after the CSRF checks: same-site request and a token matching `session`."""
        # A cross-site post is refused before its body is read.
        refuse_cross_site(request, origin_of(self.public_url) if self.public_url else None)
        if request.content_length and request.content_length > MAX_FORM:
            raise PageError(413, "too_large")
        data = await request.post()
        self.check_csrf(request, session, data.get("csrf"))
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def check_csrf(self, request: web.Request, session: str | None, sent: object) -> None:
        """403 unless `sent` is the CSRF token of `session`.

        `form` checks both; a form read by other means (e.g. multipart) calls `refuse_cross_site` before
        reading its body, then this.
        """
        if not session or not isinstance(sent, str) or not hmac.compare_digest(sent, self.csrf_token(session)):
            log.warning("csrf_refused", path=request.path)
            raise PageError(403, "csrf")

    # ---- rendering -------------------------------------------------------------------------

    def locale(self, request: web.Request, account_locale: str | None = None) -> str:
        return i18n.pick_locale(
            request.query.get("lang"), request.cookies.get(LANG_COOKIE), account_locale,
            accept_language=request.headers.get("Accept-Language"),
        )

    def render(
        self,
        request: web.Request,
        template: str,
        *,
        status: int = 200,
        locale: str | None = None,
        company_name: str = "",
        session: str | None = None,
        form_targets: Iterable[str] = (),
        refresh: int | None = None,
        time_zone: str | None = None,
        **context: Any,
    ) -> web.Response:
        """A page in the person's language with the security headers; `session` gives its forms a CSRF token."""
        lang = locale or self.locale(request)
        _ = self.catalogue.translator(lang)
        here = context.pop("here", None) or (request.path_qs if request.method == "GET" else request.path)
        languages = context.pop("languages", None)
        if languages is None:
            languages = [
                {"code": code, "name": i18n.LANGUAGE_NAMES[code], "url": with_query(here, lang=code)}
                for code in i18n.LOCALES
                if code != lang
            ]
        html = self.env.get_template(template).render(
            _=_, lang=lang, languages=languages, company_name=company_name, product_name=self.product_name,
            csrf=self.csrf_token(session) if session else "", static_url=self.static_url,
            format_moment=lambda moment: i18n.format_moment(moment, lang, time_zone), **context,
        )
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        response.headers["Content-Security-Policy"] = csp(form_targets)
        response.headers["Content-Language"] = lang
        if refresh:
            # The HTTP header rather than <meta http-equiv>: the same reload without JavaScript, and
            # only on waiting pages that hold no form a reload could interrupt.
            response.headers["Refresh"] = str(refresh)
        if request.query.get("lang") == lang:
            self.set_cookie(response, LANG_COOKIE, lang, max_age=365 * 86400)
        return response

    def error_page(self, request: web.Request, status: int, key: str, *, company_name: str = "",
                   locale: str | None = None, back_url: str | None = None, time_zone: str | None = None,
                   **values: Any) -> web.Response:
        """The page for error `key` (texts `error.<key>.title` and `.body`), in the person's language."""
        lang = self.locale(request, locale)
        if f"error.{key}.title" not in self.catalogue.keys("en"):
            key = "general"
        if "locked_until" in values and isinstance(values["locked_until"], str):
            values["until"] = i18n.format_moment(parse_time(values["locked_until"]), lang, time_zone)
        text_values = {k: v for k, v in values.items() if isinstance(v, str | int)}
        here = request.path_qs if request.method == "GET" else None
        return self.render(request, "error.html", status=status, locale=lang, company_name=company_name or "",
                           key=key, text_values=text_values, back_url=back_url,
                           **({"here": here} if here else {"languages": []}))


PAGES = web.AppKey("pages", Pages)


def csp(form_targets: Iterable[str] = ()) -> str:
    """The pages' Content-Security-Policy; forms may also go to `form_targets` (origins), the redirect's target."""
    targets = " ".join(["'self'", *sorted(set(form_targets))])
    return f"{_BASE_CSP}; form-action {targets}"


def refuse_cross_site(request: web.Request, public_origin: str | None = None) -> None:
    """403 when the browser says the request comes from another site (before any token is read)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        raise PageError(403, "csrf")
    origin = request.headers.get("Origin")
    # "null" is what a privacy-minded browser sends for its own forms too: the token decides then.
    if origin and origin != "null" and origin not in (f"{request.scheme}://{request.host}", public_origin):
        raise PageError(403, "csrf")


def new_token() -> str:
    """A fresh 256-bit token for a URL or a cookie."""
    return secrets.token_urlsafe(32)


def with_query(url: str, **params: str) -> str:
    """`url` with `params` set in its query string (others kept, in order)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def return_url_allowed(url: str, prefixes: Iterable[str], *, allow_loopback: bool) -> bool:
    """Whether the browser may be sent to `url`: it starts with a registered prefix, compared by parts.

    Scheme, host and port must be equal and the path must continue the prefix's path at a segment
    boundary, so `https://app.example` does not admit `https://app.example.evil` and `/app` does
    not admit `/application`. Loopback addresses (any port) pass in development.
    """
    if len(url) > 2048 or any(c in url for c in "\r\n\t\\ ") or not url.isascii():
        return False
    try:
        target = urlsplit(url)
        target_port = target.port
    except ValueError:
        return False
    if target.scheme not in ("http", "https") or not target.hostname or target.username or target.password:
        return False
    if allow_loopback and _is_loopback(target.hostname):
        return True
    for prefix in prefixes:
        try:
            allowed = urlsplit(prefix)
            allowed_port = allowed.port
        except ValueError:
            continue
        if (allowed.scheme, allowed.hostname, allowed_port) != (target.scheme, target.hostname, target_port):
            continue
        base = allowed.path or "/"
        path = target.path or "/"
        if path == base or path.startswith(base if base.endswith("/") else base + "/"):
            return True
    return False


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For `/mfa/` paths (and `Pages.page_paths`): the security headers on every answer and errors as pages."""
    pages = request.app[PAGES]
    if not (request.path.startswith(PREFIX) or request.path in pages.page_paths):
        return await handler(request)
    try:
        response = await handler(request)
    except PageError as exc:
        response = pages.error_page(request, exc.status, exc.key, **exc.values)
    except MfaError as exc:
        # A use case refused: the stable code picks the page (unknown codes get the general one).
        key = exc.code if f"error.{exc.code}.title" in pages.catalogue.keys("en") else "general"
        response = pages.error_page(request, exc.status, key, **exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers.update(security_headers())
            raise
        key = "not_found" if exc.status == 404 else "method" if exc.status == 405 else "general"
        response = pages.error_page(request, exc.status, key)
    headers = security_headers()
    if request.path.startswith(STATIC_PREFIX) and response.status in (200, 304):
        del headers["Cache-Control"]  # the same for everyone, and its URL changes with it: kept
    response.headers.update(headers)
    response.headers.setdefault("Content-Security-Policy", csp())
    return response


def security_headers() -> dict[str, str]:
    return {
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def add_static(app: web.Application) -> None:
    """Serve the pages' static files (`Pages.static`, from memory) at `/mfa/static/{name}`."""
    app.router.add_get(STATIC_PREFIX + "{name}", _static_file)


async def _static_file(request: web.Request) -> web.Response:
    """A static file: for a year under its versioned URL (`Pages.static_url`), else for 5 minutes; 304 when unchanged."""
    file = request.app[PAGES].static.get(request.match_info["name"])
    if file is None:
        raise web.HTTPNotFound()
    etag = f'"{file.version}"'
    headers = {"ETag": etag, "Cache-Control": "public, max-age=" + (
        f"{_YEAR}, immutable" if request.query.get("v") == file.version else "300")}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, content_type=file.content_type, headers=headers)


def redirect(location: str, response_hook: Callable[[web.StreamResponse], None] | None = None) -> web.Response:
    """A 303 See Other to `location` (after a POST the browser GETs it; the POST is not repeated)."""
    response = web.Response(status=303, headers={"Location": location})
    if response_hook:
        response_hook(response)
    return response
