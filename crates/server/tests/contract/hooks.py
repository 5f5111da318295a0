"""Schemathesis hooks for crates/server/tests/it/contract.rs.

A few rules of the API relate two values, which a JSON Schema cannot state; the document states
them in prose (the descriptions) and these hooks make valid-by-document requests keep them, as
any real client does, right before each request is sent:

- an `Idempotency-Key` is new to each request (a key reused for another request is refused
  with 422: that is the key's purpose, not a fault of the request);
- a transfer's `to_warehouse` differs from its `warehouse`;
- a report's `params.from` is not after its `params.to`;
- a ledger `cursor` has the form of the pages it came from: `NANOS.ID` for pages in posting-time
  order (filtered by date only), `ID` for the others;
- and the run does not revoke its own token (`DELETE /tokens/{id}` of the token it uses,
  `MALAKA_CONTRACT_TOKEN_ID`), after which it could test nothing but 401s.

Only requests generated as valid are touched: an invalid one must stay as generated.
"""

import os
import re
import uuid
from datetime import datetime

import schemathesis

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _time(s):
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s.upper().replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def _other_code(code):
    """Another valid warehouse code than `code` (same pattern and length limit)."""
    last = code[-1:]
    return code[:-1] + ("B" if last == "A" else "A")


_OWN_TOKEN = os.environ.get("MALAKA_CONTRACT_TOKEN_ID")


@schemathesis.hook
def before_call(context, case, kwargs):
    if (
        case.operation.method.upper() == "DELETE"
        and case.operation.path == "/api/v1/tokens/{id}"
        and str((case.path_parameters or {}).get("id")) == _OWN_TOKEN
    ):
        case.path_parameters["id"] = 0  # no such token: 404
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and _KEY.match(key):
        # New to each request, whatever was generated (a valid key stays valid).
        headers["Idempotency-Key"] = uuid.uuid4().hex
    if not _positive(case):
        return
    if case.operation.path == "/api/v1/ledger" and isinstance(case.query, dict):
        q = case.query
        cursor = q.get("cursor")
        if isinstance(cursor, str):
            by_time = ("from" in q or "to" in q) and "sku" not in q and "warehouse" not in q
            if by_time and "." not in cursor:
                q["cursor"] = "0." + cursor
            elif not by_time and "." in cursor:
                q["cursor"] = cursor.split(".", 1)[1]
    if not isinstance(case.body, dict):
        return
    body = case.body
    movements = body.get("movements") if isinstance(body.get("movements"), list) else [body]
    for m in movements:
        if (
            isinstance(m, dict)
            and m.get("type") == "transfer"
            and isinstance(m.get("warehouse"), str)
            and m.get("warehouse") == m.get("to_warehouse")
        ):
            m["to_warehouse"] = _other_code(m["warehouse"])
    params = body.get("params")
    if isinstance(params, dict):
        start, end = _time(params.get("from")), _time(params.get("to"))
        if start is not None and end is not None and start > end:
            params["from"], params["to"] = params["to"], params["from"]
