"""Schemathesis hooks of scripts/lib/fuzz-api.sh (named in schemathesis.toml).

Three refusals of requests that match schemas/openapi.yaml are the API's,
not the document's fault, and no JSON Schema can say when they happen:
- a cursor is any string by its schema, but only one the service issued for
  that course (or that moderation list) is taken (400 `invalid_cursor`);
- a trend's `from` may be any date by its schema, but not after `to` nor
  more than 365 days before it, nor may either fall outside MySQL's DATETIME
  years (422 on `from` or `to`);
- an `Idempotency-Key` this student already sent with another submission is
  422 `idempotency_key_reused`, and the fuzzer sends the same few keys with
  many bodies.
schemathesis.toml lets `positive_data_acceptance` take those statuses on
those operations; the check here makes sure such an answer is that refusal
and nothing else.
"""

from __future__ import annotations

import schemathesis

# Per operation: the status a schema-valid request may still get, the error
# code it must then have, the fields it may name (the request must carry the
# one named), and where those are sent.
DOCUMENTED_REFUSALS = {
    "GET /v1/courses/{course_id}/feedback": (400, "invalid_cursor", {"cursor"}, "query"),
    "GET /v1/moderation": (400, "invalid_cursor", {"cursor"}, "query"),
    "GET /v1/moderation/log": (400, "invalid_cursor", {"cursor"}, "query"),
    "GET /v1/courses/{course_id}/trend": (422, "invalid_value", {"from", "to"}, "query"),
    "POST /v1/feedback": (422, "idempotency_key_reused", {"Idempotency-Key"}, "header"),
}


@schemathesis.check
def refusals_of_valid_requests_are_the_documented_ones(ctx, response, case):
    """A schema-valid request refused on these operations names the documented cause."""
    refusal = DOCUMENTED_REFUSALS.get(case.operation.label)
    meta = case.meta
    if refusal is None or meta is None or not meta.generation.mode.is_positive:
        return None
    status, code, fields, location = refusal
    if response.status_code != status:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"a {status} without the contract's error body: {response.text[:200]!r}")
    if error.get("code") != code or error.get("field") not in fields:
        raise AssertionError(
            f"a schema-valid request was refused with {status} {error.get('code')} "
            f"(field {error.get('field')}); the only refusal the document allows here is "
            f"{code} on {' or '.join(sorted(fields))}"
        )
    sent = case.query if location == "query" else case.headers
    sent = {name.lower(): value for name, value in (sent or {}).items()}
    if not any(sent.get(name.lower()) not in (None, "") for name in fields):
        raise AssertionError(f"{status} {code} for a request without {' or '.join(sorted(fields))}")
    return True
