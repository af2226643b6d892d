"""What people see of the running gateway: the admin API (`admin/`), Prometheus metrics, the
`/status` page (with the incident line and its feed), `/healthz` and `/readyz`, JSON logs and
the masking of personal data in them, and what the service manager (systemd) is told of the
gateway's state (`service_manager`).

It may import `gateway.edge`, `gateway.outbox`, `gateway.resilience`, `gateway.upstream` and
the shared root modules. It is handed the parts it shows (store, breakers, dispatcher, …) by
`gateway.app`; it never imports `gateway.app`.
"""
