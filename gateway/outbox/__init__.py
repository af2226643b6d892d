"""The durable outbox: submissions and their states, the store behind them (`store/`: the
`OutboxStore` protocol, SQLite with group commit, PostgreSQL for replicas), the settlement
table that turns an attempt's result into a submission's next state, the dispatcher that
delivers what is queued (`dispatcher`: the loop; `delivery`: what one delivery sends and
decides; `wakeups`: waking every replica's dispatcher when there is work; `outage`: logging a
store that stops answering), the reconciliation
that finds out what a lost answer did, the issuance follower that tracks each accepted invoice
to its final status, the callback events that tell a tenant's own system what became of its
queued submissions (`callbacks`), the manual-issuance export layout (`manual`), and the on-call
actions.

It may import `gateway.resilience`, `gateway.upstream` and the shared root modules. Metrics and
logs observe it through callbacks and protocols; it never imports `gateway.ops` or
`gateway.edge`.
"""
