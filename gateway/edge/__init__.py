"""The client listener's request path: what integrators talk to.

Owns the proxy (classify → authenticate the tenant → idempotency → resilience pipeline →
respond or enqueue), tenants and their API keys (`tenants`) and per-tenant limits (`limits`),
the listener's connection gate and input limits (`listener`), the intake of submissions into
the outbox, the responses the gateway makes itself (outcomes and problem+json), and the
platform's own surface for vendor-SDK clients (`sdk`: their token endpoint and signed calls;
`platform_answers`: answers in the platform's terms). It may import
`gateway.outbox`, `gateway.resilience`, `gateway.upstream` and the shared root modules; what it
reports to metrics goes through the `ExchangeObserver` protocol, never `gateway.ops` itself.
"""
