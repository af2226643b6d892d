"""The invoice platform as the gateway reaches it: one HTTP connection pool, the transport
models (`UpstreamRequest`, `UpstreamResponse`), aiohttp's errors translated into the gateway's
own where they enter, and the auth schemes in `auth/` that sign every attempt afresh.

The bottom layer: it imports only the shared root modules (`config`, `errors`, `clock`,
`headers`). The durable token store it needs is a protocol declared here (`auth.tokens`) and
implemented by the outbox's store.
"""
