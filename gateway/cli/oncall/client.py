"""A small blocking client for the admin API (docs/admin-api.md), for the on-call CLI.

Every failure leaves this module as one exception type, `AdminApiError`, carrying the exit code
the CLI returns for it, so a command never inspects urllib or socket errors itself:

    AdminApiError           the gateway refused or failed the action (problem+json 4xx/5xx)  1
    ├── AdminUnreachable    no connection, no answer in time, or not an HTTP server          3
    └── AdminAuthError      401 (no or unknown token) or 403 (the token's role may not)      4

It is blocking on purpose: one request at a time is all a person at a terminal needs, and a
Ctrl-C lands in the main thread as `KeyboardInterrupt` where the command can act on it (cancel a
bulk job) rather than inside an event loop.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from gateway.errors import GatewayError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_AUTH: Final = 4

DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:8081"
API_PREFIX: Final = "/admin/v1"
NDJSON: Final = "application/x-ndjson"
STREAM_READ_BYTES: Final = 64 * 1024

#: Query parameters as the admin API takes them: ordered (key, value) pairs.
Query = Sequence[tuple[str, str]]


class AdminApiError(GatewayError):
    """The admin API call did not succeed; `exit_code` is what the CLI exits with."""

    exit_code: int = EXIT_FAILURE

    def __init__(
        self, message: str, *, status: int | None = None, problem: Mapping[str, Any] | None = None
    ) -> None:
        self.status = status
        self.problem = dict(problem or {})
        super().__init__(message)


class AdminUnreachable(AdminApiError):
    """No HTTP answer at all: connection refused, DNS, timeout, or not an HTTP server."""

    exit_code = EXIT_UNREACHABLE


class AdminAuthError(AdminApiError):
    """401: no or unknown token. 403: the token's role may not do this."""

    exit_code = EXIT_AUTH


class AdminClient:
    """Calls `/admin/v1/…` on `base_url` with a bearer token; answers are parsed JSON."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token = token

    # -- submissions ------------------------------------------------------------------------

    def list_submissions(
        self, filters: Query, *, limit: int, cursor: str | None = None
    ) -> dict[str, Any]:
        query = [*filters, ("limit", str(limit))]
        if cursor:
            query.append(("cursor", cursor))
        return _object(self.call("GET", "/submissions", query=query))

    def count(self, filters: Query) -> int:
        return _whole(self.call("GET", "/submissions/count", query=filters), "count")

    def submission(self, submission_id: str) -> dict[str, Any]:
        return _object(self.call("GET", f"/submissions/{_segment(submission_id)}"))

    def act(self, submission_id: str, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """`replay`, `requeue`, `discard`, `force-resend` or `mark-issued` one submission."""
        path = f"/submissions/{_segment(submission_id)}/{action}"
        return _object(self.call("POST", path, body=body))

    def mark_issued(self, submission_id: str, invoice_number: str, reason: str) -> dict[str, Any]:
        """Record that the invoice was issued by hand in the tax bureau's portal."""
        body = {"invoice_number": invoice_number, "reason": reason}
        return self.act(submission_id, "mark-issued", body)

    def export_manual(self, filters: Mapping[str, Any], reason: str) -> dict[str, Any]:
        """The stuck invoices laid out for the portal's batch import (`columns`, `rows`,
        `totals`, …), personal data whole; audited."""
        body = {"filter": dict(filters), "reason": reason}
        answer = _object(self.call("POST", "/submissions/export-manual", body=body))
        if not isinstance(answer.get("rows"), list) or not isinstance(answer.get("columns"), list):
            raise AdminApiError(f"expected rows from the admin API, got: {answer!r:.200}")
        return answer

    def edit(self, submission_id: str, pointer: str, value: Any, reason: str) -> dict[str, Any]:
        body = {"pointer": pointer, "value": value, "reason": reason}
        path = f"/submissions/{_segment(submission_id)}/payload"
        return _object(self.call("PATCH", path, body=body))

    # -- bulk replay jobs -------------------------------------------------------------------

    def replay_count(self, filters: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
        """The dry run: `{"count": N, "filter": …}`, what a bulk replay would touch."""
        body = {"filter": dict(filters), "dry_run": True, "reason": reason}
        answer = _object(self.call("POST", "/replays", body=body))
        _whole(answer, "count")
        return answer

    def start_replay(self, filters: Mapping[str, Any], reason: str) -> dict[str, Any]:
        body = {"filter": dict(filters), "dry_run": False, "reason": reason}
        answer = _object(self.call("POST", "/replays", body=body))
        if not isinstance(answer.get("job_id"), str):
            raise AdminApiError(f"expected a job id from the admin API, got: {answer!r:.200}")
        return answer

    def job(self, job_id: str) -> dict[str, Any]:
        return _object(self.call("GET", f"/jobs/{_segment(job_id)}"))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return _object(self.call("POST", f"/jobs/{_segment(job_id)}/cancel"))

    # -- dispatcher, circuit, audit -----------------------------------------------------------

    def dispatcher(self, action: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """The dispatcher's state; `action` `pause` or `resume` changes it first."""
        if action is None:
            return _object(self.call("GET", "/dispatcher"))
        return _object(self.call("POST", f"/dispatcher/{action}", body={"reason": reason}))

    def circuit(self, action: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Breakers and upstream health; `action` `open`, `close` or `reset` changes them first."""
        if action is None:
            return _object(self.call("GET", "/circuit"))
        return _object(self.call("POST", f"/circuit/{action}", body={"reason": reason}))

    def token(
        self, *, refresh: bool = False, reason: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """The platform access token's state; `refresh` asks the platform for a new one first
        (for `tenant`'s own identity, when given)."""
        if not refresh:
            return _object(self.call("GET", "/token"))
        body: dict[str, Any] = {"reason": reason}
        if tenant is not None:
            body["tenant"] = tenant
        return _object(self.call("POST", "/token/refresh", body=body))

    def incident(self, message: str | None, reason: str | None = None) -> dict[str, Any]:
        """Show `message` at the top of `/status` on every replica, or (None) clear the line;
        the answer is `{"incident": {...} | null}`, the line shown now."""
        if message is None:
            query = [("reason", reason)] if reason else []
            return _object(self.call("DELETE", "/status/incident", query=query))
        body = {"message": message, "reason": reason}
        return _object(self.call("PUT", "/status/incident", body=body))

    def callbacks(
        self, *, states: str | None, tenant: str | None, submission: str | None, limit: int
    ) -> dict[str, Any]:
        """Callback events, newest first: `{"items": [...]}`."""
        query = [("limit", str(limit))]
        for name, value in (("state", states), ("tenant", tenant), ("submission_id", submission)):
            if value:
                query.append((name, value))
        return _object(self.call("GET", "/callbacks", query=query))

    def replay_callback(self, event_id: str, reason: str | None) -> dict[str, Any]:
        """Send a callback event again; the event as it is now (pending)."""
        path = f"/callbacks/{_segment(event_id)}/replay"
        return _object(self.call("POST", path, body={"reason": reason}))

    def audit(self, *, limit: int, cursor: str | None = None) -> dict[str, Any]:
        query = [("limit", str(limit))]
        if cursor:
            query.append(("cursor", cursor))
        return _object(self.call("GET", "/audit", query=query))

    # -- export and import ------------------------------------------------------------------

    @contextlib.contextmanager
    def export_lines(self, filters: Query) -> Iterator[Iterator[bytes]]:
        """The export as it streams in, one JSON Lines record (with its newline) at a time."""
        with self._open("GET", "/export", query=filters, accept=NDJSON) as response:
            yield _lines(response, self.url("/export"))

    def import_records(self, data: bytes) -> int:
        answer = self.call("POST", "/import", raw=data, content_type=NDJSON)
        return _whole(answer, "imported")

    # -- the wire ---------------------------------------------------------------------------

    def url(self, path: str, query: Query = ()) -> str:
        url = f"{self.base_url}{API_PREFIX}{path}"
        return f"{url}?{urllib.parse.urlencode(list(query))}" if query else url

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: Mapping[str, Any] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request; the parsed JSON answer, or `AdminApiError`."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        with self._open(
            method, path, query=query, data=data, content_type=content_type
        ) as response:
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise _unreachable(self.url(path), exc, method) from exc
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise AdminApiError(
                f"{method} {self.url(path)} answered {response.status} with something that is "
                "not JSON; is --url the admin listener (not the client listener)?",
                status=response.status,
            ) from None

    @contextlib.contextmanager
    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        data: bytes | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Iterator[http.client.HTTPResponse]:
        url = self.url(path, query)
        # The scheme was checked in __init__: only http(s) URLs are opened.
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", f"{accept}, application/problem+json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise _http_error(exc, method, url) from None
        except (OSError, http.client.HTTPException) as exc:
            # URLError is an OSError; so are refused connections, resets and timeouts.
            raise _unreachable(self.base_url, exc, method) from exc
        with response:
            yield response


def _http_error(exc: urllib.error.HTTPError, method: str, url: str) -> AdminApiError:
    status = exc.code
    try:
        payload = exc.read()
    except (OSError, http.client.HTTPException):
        payload = b""
    problem: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        parsed = json.loads(payload)
        if isinstance(parsed, dict):
            problem = parsed
    detail = str(problem.get("detail") or problem.get("title") or exc.reason or "").strip()
    if status == 401:
        return AdminAuthError(
            "the admin API did not accept the token (401"
            + (f": {detail}" if detail else "")
            + "); set GATEWAY_ADMIN_TOKEN (or --token-file) to a token listed in admin.tokens",
            status=status,
            problem=problem,
        )
    if status == 403:
        return AdminAuthError(
            "this token may not do that (403"
            + (f": {detail}" if detail else "")
            + "); it needs a token with the operator role",
            status=status,
            problem=problem,
        )
    title = str(problem.get("title") or exc.reason or "error")
    if not problem and status == 404:
        detail = f"{method} {url} is not a route of the admin API; is --url the admin listener?"
    return AdminApiError(
        f"the gateway refused ({status} {title})" + (f": {detail}" if detail != title else ""),
        status=status,
        problem=problem,
    )


def _unreachable(base_url: str, exc: BaseException, method: str) -> AdminUnreachable:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        why = "no answer in time (raise --timeout if the gateway is busy)"
        if method != "GET":
            why += "; the action may still have been applied: look before repeating it"
    elif isinstance(reason, OSError) and reason.strerror:
        why = reason.strerror
    else:
        why = str(reason) or type(reason).__name__
    return AdminUnreachable(
        f"cannot reach the gateway admin API at {base_url}: {why}; is it running? is --url right?"
    )


def _lines(response: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
    # read1, not readline: on a chunked body cut off mid-way readline just ends, read1 raises.
    pending = b""
    try:
        while chunk := response.read1(STREAM_READ_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
    except (OSError, http.client.HTTPException) as exc:
        # Reachable a moment ago, so this is a broken transfer, not a wrong --url.
        raise AdminApiError(f"the answer from {url} was cut off ({type(exc).__name__})") from exc
    if pending.strip():
        raise AdminApiError(f"the answer from {url} was cut off in the middle of a line")


def _object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise AdminApiError(f"expected a JSON object from the admin API, got: {answer!r:.200}")
    return answer


def _whole(answer: Any, key: str) -> int:
    value = _object(answer).get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AdminApiError(
            f"expected a whole number {key!r} from the admin API, got: {answer!r:.200}"
        )
    return value


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")
