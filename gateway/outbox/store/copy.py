"""`invoice-gateway store copy`: everything one store holds, into another (docs/postgresql.md).

Pure: two open `Store`s in, a `CopyReport` out; opening, printing and exit codes are the
command line's (`gateway.cli.store`). Nothing is held whole in memory: submissions go in
acceptance order a batch at a time (`merge_rows`), the audit log a page at a time, oldest first
(`merge_audit`), then the tokens. Both merges skip what the target holds already, so a copy
that was interrupted is finished by running it again.

The copy ends with `verify`: every source submission must be in the target, in the same state.
The source must not change while it runs: stop the gateway (every replica) first.

Encrypted stores (docs/encryption.md): rows travel as `Submission`s, opened by the source's
sealer and sealed again by the target's, so the target holds them under its own current key
(or in plaintext, if it has none), whatever keys the source used.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.errors import GatewayError, StoreError
from gateway.outbox.store.protocol import Store
from gateway.outbox.submissions import AuditEntry, Submission, SubmissionQuery

__all__ = [
    "DEFAULT_BATCH",
    "CopyError",
    "CopyReport",
    "Progress",
    "Verification",
    "copy_store",
    "verify",
]

#: Submissions (and audit entries) written per transaction.
DEFAULT_BATCH: Final = 500
#: How many submission ids a failed verification names.
NAMED: Final = 5
#: The audit entry a finished copy records in the target.
ACTION: Final = "store.copy"

EVERYTHING: Final = SubmissionQuery()

#: `progress(phase, done, total)` after each batch: phase "submissions", "audit" or "verify".
Progress = Callable[[str, int, int], None]


class CopyError(GatewayError):
    """A copy that cannot go on as asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Verification:
    """How the target compares with the source, submission by submission."""

    #: Source submissions looked up in the target.
    checked: int
    #: Source submissions the target does not hold (the first `NAMED` ids, and how many).
    missing: tuple[str, ...] = ()
    missing_count: int = 0
    #: Submissions in another state in the target: (id, source state, target state).
    differing: tuple[tuple[str, str, str], ...] = ()
    differing_count: int = 0
    #: The checked submissions by state, in the source and in the target ("missing" there).
    source_states: dict[str, int] = field(default_factory=dict)
    target_states: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.differing_count == 0

    def describe(self) -> str:
        """What differs, for people; "" when nothing does."""
        problems: list[str] = []
        if self.missing_count:
            problems.append(
                f"the target lacks {self.missing_count} of {self.checked} source submissions"
                f" ({_named(self.missing, self.missing_count)})"
            )
        if self.differing_count:
            pairs = [f"{i}: source {s}, target {t}" for i, s, t in self.differing]
            problems.append(
                f"{self.differing_count} submissions are in another state in the target"
                f" ({_named(pairs, self.differing_count)})"
            )
        if not problems:
            return ""
        problems.append(
            f"by state: source {_states(self.source_states)}; target {_states(self.target_states)}"
        )
        return "; ".join(problems)


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What a copy found and did."""

    #: Submissions in the source, by state.
    by_state: dict[str, int]
    #: Of those, how many this run stored, and how many the target held already.
    copied: int
    already_present: int
    #: Audit entries in the source; how many this run stored (the rest were there).
    audit_entries: int
    audit_copied: int
    #: Token rows copied (always all of them: the source's replace the target's).
    tokens: int
    verification: Verification

    @property
    def submissions(self) -> int:
        return sum(self.by_state.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "submissions": self.submissions,
            "copied": self.copied,
            "already_present": self.already_present,
            "by_state": dict(self.by_state),
            "audit_entries": self.audit_entries,
            "audit_copied": self.audit_copied,
            "tokens": self.tokens,
            "verified": self.verification.ok,
            **({"problems": self.verification.describe()} if not self.verification.ok else {}),
        }


async def copy_store(
    source: Store,
    target: Store,
    *,
    source_name: str,
    actor: str,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy submissions, audit log and tokens from `source` into `target`, then verify.

    When the verification passes, one audit entry (`store.copy`, by `actor` as operator, naming
    `source_name`, which must not show a password) is recorded in the target; when it fails,
    none is, and the report says what differs. Raises `StoreError` when either store fails and
    `CopyError` when a submission cannot be stored in the target (another submission there
    holds its idempotency key); what was copied before stays, and a second run goes on.
    """
    report = _noop if progress is None else progress
    by_state, copied = await _copy_submissions(source, target, batch, report)
    audit_entries, audit_copied = await _copy_audit(source, target, batch, report)
    tokens = await source.token_rows()
    for key, token in tokens:
        await target.save_token(key, token)
    verification = await verify(source, target, batch=batch, progress=report)
    result = CopyReport(
        by_state=by_state,
        copied=copied,
        already_present=sum(by_state.values()) - copied,
        audit_entries=audit_entries,
        audit_copied=audit_copied,
        tokens=len(tokens),
        verification=verification,
    )
    if verification.ok:
        details = {"source": source_name, **result.as_json()}
        details.pop("verified")
        await target.record_audit(
            AuditEntry(actor=actor, role="operator", action=ACTION, details=details)
        )
    return result


async def verify(
    source: Store,
    target: Store,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> Verification:
    """Look every source submission up in the target (a batch at a time) and compare states.

    While the target's rows come in the source's order (a target only ever copied into), both
    are streamed side by side; from the first batch that does not line up, each source row is
    looked up by id."""
    report = _noop if progress is None else progress
    total = await source.count(EVERYTHING)
    checked = 0
    missing: list[str] = []
    differing: list[tuple[str, str, str]] = []
    missing_count = differing_count = 0
    source_states: Counter[str] = Counter()
    target_states: Counter[str] = Counter()
    async with (
        contextlib.aclosing(_batches(source, batch)) as batches,
        contextlib.aclosing(_batches(target, batch)) as copies,
    ):
        aligned = True
        async for rows in batches:
            found: list[Submission | None] | None = None
            if aligned:
                # A target filled only by copies of this source holds its rows in the same
                # order: compare batch by batch while the ids line up.
                candidates: list[Submission] = await anext(copies, [])
                if [row.id for row in candidates] == [row.id for row in rows]:
                    found = list(candidates)
                else:
                    aligned = False
            if found is None:
                found = list(await asyncio.gather(*(target.get(row.id) for row in rows)))
            for row, copy in zip(rows, found, strict=True):
                source_states[row.state.value] += 1
                target_states[copy.state.value if copy else "missing"] += 1
                if copy is None:
                    missing_count += 1
                    missing += [row.id][: NAMED - len(missing)]
                elif copy.state is not row.state:
                    differing_count += 1
                    pair = (row.id, row.state.value, copy.state.value)
                    differing += [pair][: NAMED - len(differing)]
            checked += len(rows)
            report("verify", checked, max(total, checked))
    return Verification(
        checked=checked,
        missing=tuple(missing),
        missing_count=missing_count,
        differing=tuple(differing),
        differing_count=differing_count,
        source_states=dict(sorted(source_states.items())),
        target_states=dict(sorted(target_states.items())),
    )


async def _copy_submissions(
    source: Store, target: Store, batch: int, progress: Progress
) -> tuple[dict[str, int], int]:
    """Every source submission, oldest first, into `target`; (source rows by state, stored)."""
    total = await source.count(EVERYTHING)
    by_state: Counter[str] = Counter()
    seen = copied = 0
    async with contextlib.aclosing(_batches(source, batch)) as batches:
        async for rows in batches:
            copied += await _merge(target, rows)
            by_state.update(row.state.value for row in rows)
            seen += len(rows)
            progress("submissions", seen, max(total, seen))
    return dict(sorted(by_state.items())), copied


async def _merge(target: Store, rows: list[Submission]) -> int:
    """`target.merge_rows(rows)`; when the batch fails, one row at a time, so that the error
    names the row that cannot be stored (rows stored before it stay: a rerun skips them)."""
    with contextlib.suppress(StoreError):
        return await target.merge_rows(rows)
    stored = 0
    for row in rows:
        try:
            stored += await target.merge_rows([row])
        except StoreError as exc:
            raise CopyError(
                f"cannot store submission {row.id} (tenant {row.tenant}, operation "
                f"{row.operation}, idempotency key {row.idempotency_key!r}) in the target: "
                f"{exc}. If the target holds another submission with that key, it is not a "
                "copy of this source: copy into an empty store"
            ) from exc
    return stored


async def _copy_audit(
    source: Store, target: Store, batch: int, progress: Progress
) -> tuple[int, int]:
    """The source's audit log into `target`, oldest entry first; (entries, stored).

    `audit_log` pages go newest first: a first pass keeps only the cursor of each page, then
    the pages are read again from the last (oldest) one."""
    cursors: list[str | None] = [None]
    total = 0
    while True:
        entries, after = await source.audit_log(limit=batch, cursor=cursors[-1])
        total += len(entries)
        if after is None:
            break
        cursors.append(after)
    done = stored = 0
    for cursor in reversed(cursors):
        entries, _ = await source.audit_log(limit=batch, cursor=cursor)
        stored += await target.merge_audit(entries[::-1])
        done += len(entries)
        progress("audit", done, max(total, done))
    return done, stored


async def _batches(store: Store, size: int) -> AsyncGenerator[list[Submission], None]:
    """`store.stream()` of every submission in lists of `size`; the stream is closed when the
    caller stops early."""
    rows: AsyncIterator[Submission] = store.stream(EVERYTHING)
    chunk: list[Submission] = []
    try:
        async for row in rows:
            chunk.append(row)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        close = getattr(rows, "aclose", None)
        if close is not None:
            await close()


def _named(items: list[str] | tuple[str, ...], count: int) -> str:
    more = count - len(items)
    return ", ".join(items) + (f", and {more} more" if more > 0 else "")


def _states(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in counts.items()) or "none"


def _noop(_phase: str, _done: int, _total: int) -> None:
    """No progress display."""
