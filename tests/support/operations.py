"""Submit and read operations as the unit tests of the outbox configure them: an issue with a
business key, an ordering key and a lookup-first reconcile rule, a note without one, a query."""

from __future__ import annotations

from gateway.config import OperationConfig

SERVICES = "/open/v1/services"
ISSUE = OperationConfig.model_validate(
    {
        "name": "issue",
        "kind": "submit",
        "match": {"method": "POST", "path": SERVICES, "headers": {"method": "issue"}},
        "business_key": "/order/orderNo",
        "ordering_key": "/order/orderNo",
        "reconcile": {"lookup": "query", "body": {"orderNos": ["{business_key}"]}},
    }
)
#: A submit operation without a reconcile rule: a lost answer needs on-call.
NOTE = OperationConfig.model_validate(
    {
        "name": "note",
        "kind": "submit",
        "match": {"method": "POST", "path": SERVICES, "headers": {"method": "note"}},
    }
)
QUERY = OperationConfig.model_validate(
    {
        "name": "query",
        "kind": "read",
        "match": {"method": "POST", "path": SERVICES, "headers": {"method": "query"}},
    }
)
