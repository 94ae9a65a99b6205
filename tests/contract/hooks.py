"""Schemathesis hooks for Tally's contract test (tests/integration/contract.rs).

The finance read API has rules that span parameters, which an OpenAPI
parameter schema cannot state; its document says them in words. This hook
keeps generated queries within them, so that "a schema-valid request is
never refused" means what a client reading the document would expect:

* `from` is not after `to`;
* a range spans at most TALLY_CONTRACT_MAX_SPAN_DAYS days (the server's
  `--max-span-days`);
* without `to` the range ends today (UTC); without `from` it is the 30 days
  ending at `to`.

Queries whose dates do not parse are left alone: they are the generator's
negative cases, and a 400 is their right answer.

Two parameters are opaque values only the server makes, so generated
ones are left out: an order list's `cursor` (a page's `next_cursor`;
anything else is a 400) and `after` (a command's consistency token; a
generated far-future token would make every read wait and answer 425).
The integration tests exercise both with real values.
"""

import datetime
import os

import schemathesis

MAX_SPAN_DAYS = int(os.environ.get("TALLY_CONTRACT_MAX_SPAN_DAYS", "366"))


def _date(value):
    try:
        return datetime.date.fromisoformat(value)
    except (TypeError, ValueError):
        return None


@schemathesis.hook
def filter_query(ctx, query):
    if not query:
        return True
    if "cursor" in query or "after" in query:
        return False
    today = datetime.datetime.now(datetime.timezone.utc).date()
    to = _date(query["to"]) if "to" in query else today
    if "from" in query:
        start = _date(query["from"])
    elif to is not None:
        start = to - datetime.timedelta(days=29)
    else:
        start = None
    if start is None or to is None:
        return True
    return start <= to and (to - start).days + 1 <= MAX_SPAN_DAYS


# The write API: rules across fields and requests.
#
# * A line's quantity × unit_price_minor, and the order's total, are at most
#   999 999 999 999 minor units (each field's own bound is in the schema;
#   their product and sum cannot be).
# * An Idempotency-Key is unique per request ("reuse only to retry it"): a
#   schema-valid key the generator repeats for a different body would be a
#   documented 422, so each well-formed key is made unique here. Malformed
#   keys are left alone (negative cases).

import re
import uuid

MAX_MINOR = 999_999_999_999
KEY = re.compile(r"^[!#-~]{1,255}$")


def _path(ctx):
    operation = getattr(ctx, "operation", None)
    return getattr(operation, "path", "")


@schemathesis.hook
def filter_body(ctx, body):
    if _path(ctx) != "/v1/orders" or not isinstance(body, dict):
        return True
    items = body.get("items")
    if not isinstance(items, list):
        return True
    total = 0
    for item in items:
        if not isinstance(item, dict):
            return True
        quantity, price = item.get("quantity"), item.get("unit_price_minor")
        # JSON Schema counts 3.0 as an integer, and so does the API.
        if not all(isinstance(v, (int, float)) and float(v).is_integer() for v in (quantity, price)):
            return True
        quantity, price = int(quantity), int(price)
        if quantity * price > MAX_MINOR:
            return False
        total += quantity * price
    return total <= MAX_MINOR


@schemathesis.hook
def map_headers(ctx, headers):
    if headers and isinstance(headers.get("Idempotency-Key"), str):
        if KEY.match(headers["Idempotency-Key"]):
            headers["Idempotency-Key"] = str(uuid.uuid4())
    return headers
