"""The invoice platform as the gateway reaches it: one HTTP connection pool, the transport
models (`UpstreamRequest`, `UpstreamResponse`), aiohttp's errors translated into the gateway's
own where they enter, and the auth schemes in `auth/` that sign every attempt afresh (with the
tenant's own token for a service provider's merchants) and guard the platform's token quota.

The bottom layer: it imports only the shared root modules (`config`, `errors`, `clock`,
`headers`). The durable token store it needs is a protocol declared here (`auth.tokens`) and
implemented by the outbox's store.
"""
