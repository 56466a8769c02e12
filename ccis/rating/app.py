"""The rating web app (Starlette + Jinja2 templates), served by uvicorn.

Every page, image and API call sits under a private link, ``/r/<token>/…`` for a rater
and ``/admin/<token>`` for the organiser; a token that is not in the study gets 403.
Only ``/static/`` (the page's CSS and script, no study data) answers without one.

Answers are JSON POSTs to ``/r/<token>/api/rate``. A page of another origin cannot forge
one: the request must come from this origin (``Sec-Fetch-Site``/``Origin``), be
``application/json`` (which an HTML form cannot send) and carry the rater's CSRF token
in the ``X-CSRF-Token`` header (which needs a CORS preflight this app never grants).
The rater is the link's: a body naming anything but ``image``, ``criterion`` and
``value`` is refused, so nobody can write another rater's answers. Bodies are capped
(``max_body``); bad values get a 4xx with a message and change nothing. Responses carry
a strict Content-Security-Policy (no inline script), ``Referrer-Policy: no-referrer``
(the token is in the URL) and a ``Server-Timing`` header with the app's time.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ccis.rating.blinding import group_sequence, image_sequence
from ccis.rating.criteria import CRITERIA, CRITERION_KEYS, SCALE, SCALE_NOTE
from ccis.rating.store import MEDIA_ID_RE, Rater, Store

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY = 4096  # a rating is ~80 bytes of JSON
FIELDS = ("image", "criterion", "value")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
_TOKEN_IN_PATH = re.compile(r"^/(r|admin)/[^/]+")


class Refusal(Exception):
    """A request refused with ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _redact(path: str) -> str:
    """A request path with its token hidden (for logs)."""
    return _TOKEN_IN_PATH.sub(lambda m: f"/{m.group(1)}/…", path)


class HeadersAndTiming:
    """ASGI middleware: security headers on every response, ``Server-Timing`` with the
    app's time to the response start, and a debug log line without the token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = (time.perf_counter() - start) * 1000
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
                headers.append("server-timing", f"app;dur={elapsed:.3f}")
                log.debug("%s %s -> %d in %.1f ms", scope["method"], _redact(scope["path"]),
                          message["status"], elapsed)  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RatingApp:
    """The routes over one study file."""

    def __init__(self, store: Store, origins: Sequence[str] = ()) -> None:
        self.store = store
        self.origins = {o.rstrip("/") for o in origins}
        self.title = str(store.meta.get("title") or "Image rating")
        env = Environment(
            loader=PackageLoader("ccis.rating", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates = Jinja2Templates(env=env)
        self._groups = [(g.id, g.repeat_of) for g in store.groups.values()]
        self._sequences: dict[int, list[int]] = {}

    # --- helpers -----------------------------------------------------------------------

    def sequence(self, rater_id: int) -> list[int]:
        """The rater's group ids in the order shown (computed once per rater)."""
        if rater_id not in self._sequences:
            self._sequences[rater_id] = group_sequence(self.store.seed, rater_id, self._groups)
        return self._sequences[rater_id]

    def page(self, request: Request, name: str, code: int = 200, **context: Any) -> Response:
        """Template ``name`` rendered (autoescaped) with ``context``, HTTP status ``code``."""
        context.setdefault("title", self.title)
        return self.templates.TemplateResponse(request, name, context, status_code=code)

    def refusal(self, request: Request, refusal: Refusal) -> Response:
        if "/api/" in request.url.path:
            return JSONResponse({"error": refusal.message}, status_code=refusal.status)
        heading = {403: "This link is not valid", 404: "Not found"}.get(
            refusal.status, "Request refused"
        )
        return self.page(
            request, "error.html", refusal.status, status=refusal.status, heading=heading,
            message=refusal.message,
        )  # fmt: skip

    async def rater(self, request: Request) -> Rater:
        token = request.path_params.get("token", "")
        rater = await run_in_threadpool(self.store.rater_by_token, token)
        if rater is None:
            raise Refusal(
                403, "This link is not valid. Please use the personal link the study "
                "organiser sent you."
            )  # fmt: skip
        return rater

    def urls(self, request: Request) -> tuple[str, Callable[[str], str]]:
        """The rater's URL prefix and a function giving a media file's URL."""
        prefix = f"/r/{request.path_params['token']}"
        return prefix, lambda media_id: f"{prefix}/media/{media_id}"

    def missing(self, rater: Rater, answers: dict[tuple[str, str], int]) -> list[dict]:
        """Groups with unanswered scales, in the rater's order: position and count left."""
        left = []
        for position, group_id in enumerate(self.sequence(rater.id), start=1):
            group = self.store.groups[group_id]
            n = sum((i.id, c) not in answers for i in group.images for c in CRITERION_KEYS)
            if n:
                left.append({"position": position, "left": n})
        return left

    # --- pages -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        raise Refusal(403, "This study is by invitation: open the personal link you were sent.")

    async def resume(self, request: Request) -> Response:
        rater = await self.rater(request)
        answers = await run_in_threadpool(self.store.answers, rater.id)
        prefix, _ = self.urls(request)
        left = self.missing(rater, answers)
        target = f"{prefix}/g/{left[0]['position']}" if left else f"{prefix}/done"
        return RedirectResponse(target, status_code=303)

    async def group(self, request: Request) -> Response:
        rater = await self.rater(request)
        order = self.sequence(rater.id)
        position = request.path_params["position"]
        if not 1 <= position <= len(order):
            raise Refusal(404, f"There is no group {position}; groups run from 1 to {len(order)}.")
        group = self.store.groups[order[position - 1]]
        answers = await run_in_threadpool(self.store.answers, rater.id)
        answered = len(answers)
        prefix, media_url = self.urls(request)
        ids = image_sequence(self.store.seed, rater.id, group.id, [i.id for i in group.images])
        by_id = {i.id: i for i in group.images}
        images = [
            {
                "id": image_id, "letter": LETTERS[k % 26] + ("" if k < 26 else str(k // 26)),
                "width": by_id[image_id].width, "height": by_id[image_id].height,
                "answers": {c: answers[(image_id, c)] for c in CRITERION_KEYS
                            if (image_id, c) in answers},
            }
            for k, image_id in enumerate(ids)
        ]  # fmt: skip
        mask_size = self.store.sizes[group.mask]
        group_answered = sum(len(i["answers"]) for i in images)
        return self.page(
            request, "group.html",
            rater=rater.label, position=position, count=len(order), caption=group.caption,
            mask=group.mask, outline=group.outline, mask_size=mask_size, images=images,
            criteria=CRITERIA, scale=SCALE, scale_note=SCALE_NOTE, answered=answered,
            total=self.store.total, group_answered=group_answered,
            group_total=len(images) * len(CRITERION_KEYS), api=f"{prefix}/api/rate",
            csrf=rater.csrf, media_url=media_url,
            prev_url=f"{prefix}/g/{position - 1}" if position > 1 else None,
            next_url=f"{prefix}/g/{position + 1}" if position < len(order) else f"{prefix}/done",
            is_last=position == len(order),
        )  # fmt: skip

    async def done(self, request: Request) -> Response:
        rater = await self.rater(request)
        answers = await run_in_threadpool(self.store.answers, rater.id)
        prefix, _ = self.urls(request)
        missing = [
            {**item, "url": f"{prefix}/g/{item['position']}"}
            for item in self.missing(rater, answers)
        ]
        return self.page(
            request, "done.html", missing=missing, answered=len(answers),
            total=self.store.total, first_url=f"{prefix}/g/1",
        )  # fmt: skip

    async def media(self, request: Request) -> Response:
        await self.rater(request)
        media_id = request.path_params["media_id"]
        found = self.store.media_path(media_id) if MEDIA_ID_RE.match(media_id) else None
        if found is None or not found[0].is_file():
            raise Refusal(404, "No such image in this study.")
        # The URL holds the rater's token: cache privately, never in a shared cache.
        return FileResponse(
            found[0], media_type="image/png", headers={"cache-control": "private, max-age=3600"}
        )

    # --- API ---------------------------------------------------------------------------

    def check_origin(self, request: Request) -> None:
        """Refuse requests that a page of another origin sent."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            raise Refusal(403, f"Cross-site request refused (Sec-Fetch-Site: {site}).")
        origin = request.headers.get("origin")
        if origin is not None:
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin.rstrip("/") != own and origin.rstrip("/") not in self.origins:
                raise Refusal(403, f"Request from another origin refused ({origin}).")

    @staticmethod
    def parse_rating(body: bytes) -> tuple[str, str, int]:
        """(image, criterion, value) from a JSON body, or a Refusal saying what is wrong."""

        def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise Refusal(400, f"Field(s) given twice: {', '.join(twice)}.")
            return dict(pairs)

        def no_constants(name: str) -> None:
            raise Refusal(400, f"{name} is not a number JSON allows.")

        try:
            payload = json.loads(
                body.decode("utf-8"), object_pairs_hook=unique, parse_constant=no_constants
            )
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise Refusal(400, f"The request body is not valid JSON ({err}).") from None
        if not isinstance(payload, dict):
            raise Refusal(400, 'Expected a JSON object {"image", "criterion", "value"}.')
        extra = sorted(set(payload) - set(FIELDS))
        if extra:
            raise Refusal(
                400, f"Unknown field(s) {', '.join(map(repr, extra))}: a rating names only "
                "image, criterion and value; the rater is the one the link belongs to."
            )  # fmt: skip
        missing = [f for f in FIELDS if f not in payload]
        if missing:
            raise Refusal(400, f"Missing field(s): {', '.join(missing)}.")
        image, criterion, value = (payload[f] for f in FIELDS)
        if not isinstance(image, str):
            raise Refusal(422, "image must be an image id (a string).")
        if criterion not in CRITERION_KEYS:
            raise Refusal(
                422,
                f"Unknown criterion {str(criterion)[:40]!r}; one of {', '.join(CRITERION_KEYS)}.",
            )
        # bool is an int in Python; true must not count as 1.
        if isinstance(value, bool) or not isinstance(value, int) or value not in SCALE:
            raise Refusal(
                422, f"value must be a whole number from {SCALE[0]} to {SCALE[-1]}, got "
                f"{json.dumps(value)[:40]}."
            )  # fmt: skip
        return image, criterion, value

    async def rate(self, request: Request) -> Response:
        rater = await self.rater(request)
        self.check_origin(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise Refusal(415, f"Send the rating as application/json (got {kind or 'nothing'}).")
        if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), rater.csrf):
            raise Refusal(403, "Missing or wrong X-CSRF-Token for this link; reload the page.")
        image_id, criterion, value = self.parse_rating(await request.body())
        image = self.store.images.get(image_id)
        if image is None:
            raise Refusal(404, f"Unknown image id {image_id[:40]!r}.")
        group = self.store.groups[image.group_id]
        ids = [i.id for i in group.images]

        def save() -> tuple[int, int]:
            self.store.save(rater.id, image_id, criterion, value)
            return self.store.answered(rater.id), self.store.answered(rater.id, ids)

        answered, group_answered = await run_in_threadpool(save)
        return JSONResponse({
            "saved": {"image": image_id, "criterion": criterion, "value": value},
            "answered": answered, "total": self.store.total,
            "group_answered": group_answered, "group_total": len(ids) * len(CRITERION_KEYS),
        })  # fmt: skip

    async def my_answers(self, request: Request) -> Response:
        rater = await self.rater(request)
        answers = await run_in_threadpool(self.store.answers, rater.id)
        return JSONResponse({
            "rater": rater.label, "answered": len(answers), "total": self.store.total,
            "answers": [{"image": i, "criterion": c, "value": v}
                        for (i, c), v in sorted(answers.items())],
        })  # fmt: skip

    # --- admin -------------------------------------------------------------------------

    async def _admin(self, request: Request) -> list[dict[str, object]]:
        if not await run_in_threadpool(self.store.is_admin, request.path_params["token"]):
            raise Refusal(403, "This admin link is not valid.")
        return await run_in_threadpool(self.store.progress)

    async def admin(self, request: Request) -> Response:
        raters = await self._admin(request)
        return self.page(
            request, "admin.html", raters=raters,
            groups=int(self.store.meta["groups"]), repeats=int(self.store.meta["repeats"]),
            generators=len(self.store.generators), total=self.store.total,
            complete=sum(r["answered"] == r["total"] for r in raters),
            answered=sum(int(r["answered"]) for r in raters),
        )  # fmt: skip

    async def admin_progress(self, request: Request) -> Response:
        return JSONResponse({"raters": await self._admin(request), "total": self.store.total})


def create_app(
    study: str | os.PathLike,
    *,
    allowed_hosts: Sequence[str] = (DEFAULT_HOST, "localhost"),
    origins: Sequence[str] = (),
    max_body: int = MAX_BODY,
) -> Starlette:
    """The web app over the study file ``study``.

    ``allowed_hosts``: Host headers answered (others get 400: no DNS rebinding);
    ``origins``: further origins allowed to POST (a reverse proxy's public URL).
    """
    store = Store(study)
    missing = []
    for media_id, (relative, _) in store.media.items():
        found = store.media_path(media_id)
        if found is None or not found[0].is_file():
            missing.append(relative)
    if missing:
        raise FileNotFoundError(
            f"{store.path}: {len(missing)} image file(s) missing beside it, e.g. "
            f"{', '.join(sorted(set(missing))[:3])} (was the media/ folder moved?)"
        )
    rating = RatingApp(store, origins)

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler, with its refusals turned into 4xx pages or JSON errors."""

        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Refusal as refusal:
                return rating.refusal(request, refusal)

        return endpoint

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return rating.refusal(request, Refusal(exc.status_code, str(exc.detail)))

    routes = [
        Route("/", guarded(rating.home)),
        Route("/r/{token}", guarded(rating.resume)),
        Route("/r/{token}/g/{position:int}", guarded(rating.group)),
        Route("/r/{token}/done", guarded(rating.done)),
        Route("/r/{token}/media/{media_id}", guarded(rating.media)),
        Route("/r/{token}/api/rate", guarded(rating.rate), methods=["POST"]),
        Route("/r/{token}/api/answers", guarded(rating.my_answers)),
        Route("/admin/{token}", guarded(rating.admin)),
        Route("/admin/{token}/api/progress", guarded(rating.admin_progress)),
        Mount("/static", StaticFiles(packages=[("ccis.rating", "static")]), name="static"),
    ]
    middleware = [
        Middleware(HeadersAndTiming),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        Middleware(RequestBodyLimitMiddleware, max_body_size=max_body),
    ]
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error}
    )
    app.state.store = store
    log.info(
        "study %s: %d groups, %d images, %d criteria; %d rater(s)", store.path,
        len(store.groups), len(store.images), len(CRITERION_KEYS), len(store.raters()),
    )  # fmt: skip
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the URL is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without
    # it each answer waits ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({err.strerror})") from err
    sock.listen(2048)
    return sock


def serve(
    study: str | os.PathLike,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    allowed_hosts: Sequence[str] = (),
    origins: Sequence[str] = (),
    max_body: int = MAX_BODY,
) -> None:
    """Serve the study until interrupted (uvicorn, one process)."""
    import uvicorn

    hosts = list(dict.fromkeys([DEFAULT_HOST, "localhost", host, *allowed_hosts]))
    app = create_app(study, allowed_hosts=hosts, origins=origins, max_body=max_body)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    # Printed (not only logged) so that scripts and tests can read the address.
    print(f"serving {Path(study)} at {url}/ (links: ccis rating-invite --base-url {url})",
          flush=True)  # fmt: skip
    config = uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False, proxy_headers=False,
        timeout_keep_alive=30,
    )  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
