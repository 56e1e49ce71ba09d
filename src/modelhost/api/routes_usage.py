"""Usage and weekly invoices: `GET /v1/usage` (JSON and CSV) and `GET /v1/invoices...` (JSON
and a printable HTML page). Read-only views of what the meters recorded; the money is integer
micro-dollars until it becomes a 6-decimal string here."""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from modelhost.api.deps import PrincipalDep, ServicesDep
from modelhost.api.schemas import (
    InvoiceLinePublic,
    InvoicePublic,
    InvoicesPublic,
    InvoiceSummaryPublic,
    UsagePublic,
    UsageRowPublic,
)
from modelhost.domain.money import format_micros
from modelhost.errors import Forbidden, NotFound, ValidationFailed
from modelhost.store import invoices as invoices_store
from modelhost.store import usage_queries
from modelhost.store import users as users_store
from modelhost.store.clock import iso, utcnow
from modelhost.store.users import Principal
from modelhost.web.openapi import errors

router = APIRouter()
ADMIN_NOTES = {403: "`user` or `all` given by a caller who is not an admin (`admin_only`)"}
CSV_COLUMNS = (
    "key",
    "name",
    "gpu_seconds",
    "gpu_cost",
    "prompt_tokens",
    "completion_tokens",
    "token_cost",
    "total_cost",
)

StartQ = Annotated[
    str | None,
    Query(description="ISO 8601; default: the start of the current calendar month, UTC"),
]
EndQ = Annotated[str | None, Query(description="ISO 8601 (exclusive); default: now")]
GroupQ = Annotated[str, Query(description="deployment | day | gpu | api_token | adapter")]
UserQ = Annotated[str | None, Query(description="admin: this user's usage")]
AllQ = Annotated[bool, Query(description="admin: every user's usage")]


def _instant(value: str, param: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationFailed(
            f"{param} must be an ISO 8601 date or time, e.g. 2026-11-01T00:00:00Z", param=param
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    now = utcnow()
    lo = _instant(start, "start") if start else datetime(now.year, now.month, 1, tzinfo=UTC)
    hi = _instant(end, "end") if end else now
    if hi <= lo:
        raise ValidationFailed("end must be after start", param="end")
    return lo, hi


def _whose(s: Session, who: Principal, user: str | None, all_users: bool) -> int | None:
    """The user id whose usage is asked for; None for everyone's (admin)."""
    if (user is not None or all_users) and not who.is_admin:
        raise Forbidden("`user` and `all` are for admins only", code="admin_only")
    if user is not None and all_users:
        raise ValidationFailed("give `user` or `all=true`, not both", param="user")
    if all_users:
        return None
    if user is not None:
        return users_store.get_user(s, user).id
    return who.user_id


def _usage(
    services: ServicesDep,
    who: Principal,
    start: str | None,
    end: str | None,
    group_by: str,
    user: str | None,
    all_users: bool,
) -> UsagePublic:
    if group_by not in usage_queries.GROUP_BYS:
        raise ValidationFailed(
            f"group_by must be one of {', '.join(usage_queries.GROUP_BYS)}", param="group_by"
        )
    lo, hi = _window(start, end)
    with services.db.session() as s:
        user_id = _whose(s, who, user, all_users)
        result = usage_queries.usage(
            s, lo, hi, cast(usage_queries.GroupBy, group_by), user_id=user_id
        )
    return UsagePublic(
        start=iso(result.start),
        end=iso(result.end),
        rows=[
            UsageRowPublic(
                key=r.key,
                name=r.name,
                gpu_seconds=r.gpu_seconds,
                gpu_cost=format_micros(r.gpu_cost_micros),
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens,
                token_cost=format_micros(r.token_cost_micros),
                total_cost=format_micros(r.total_cost_micros),
            )
            for r in result.rows
        ],
        total_cost=format_micros(result.total_cost_micros),
    )


@router.get("/v1/usage", responses=errors(403, 404, 422, notes=ADMIN_NOTES))
def get_usage(
    who: PrincipalDep,
    services: ServicesDep,
    start: StartQ = None,
    end: EndQ = None,
    group_by: GroupQ = "deployment",
    user: UserQ = None,
    all: AllQ = False,
) -> UsagePublic:
    """GPU time and tokens between `start` and `end`, grouped; money as 6-decimal strings."""
    return _usage(services, who, start, end, group_by, user, all)


# The CSV and HTML routes keep the default (JSON) response class, so that their errors are
# documented, and sent, in the JSON error shape; the 200 is documented by hand.
@router.get(
    "/v1/usage.csv",
    response_model=None,
    responses={
        200: {"content": {"text/csv": {}}, "description": "the rows of /v1/usage as CSV"},
        **errors(403, 404, 422, notes=ADMIN_NOTES),
    },
)
def get_usage_csv(
    who: PrincipalDep,
    services: ServicesDep,
    start: StartQ = None,
    end: EndQ = None,
    group_by: GroupQ = "deployment",
    user: UserQ = None,
    all: AllQ = False,
) -> Response:
    result = _usage(services, who, start, end, group_by, user, all)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        data = row.model_dump()
        writer.writerow([_csv_cell(data[c]) for c in CSV_COLUMNS])
    return Response(
        buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
    )


def _csv_cell(value: object) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    # A spreadsheet would run a cell starting with one of these as a formula.
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


# ---- invoices ---------------------------------------------------------------------------------


def _summary(inv: invoices_store.Invoice) -> InvoiceSummaryPublic:
    return InvoiceSummaryPublic(
        invoice_id=inv.invoice_id,
        period_start=iso(inv.period_start),
        period_end=iso(inv.period_end),
        status=inv.status,
        total=inv.total,
    )


def _invoice(inv: invoices_store.Invoice, username: str) -> InvoicePublic:
    return InvoicePublic(
        **_summary(inv).model_dump(),
        user=username,
        lines=[
            InvoiceLinePublic(
                description=line.description,
                deploy_id=line.deploy_id,
                gpu=line.gpu,
                quantity=line.quantity,
                unit=cast(Any, line.unit),
                unit_price=line.unit_price,
                amount=line.amount,
            )
            for line in inv.lines
        ],
    )


@router.get("/v1/invoices", responses=errors(403, 404, notes=ADMIN_NOTES))
def list_invoices(who: PrincipalDep, services: ServicesDep, user: UserQ = None) -> InvoicesPublic:
    """The caller's weekly invoices (Monday 00:00 to Monday 00:00 UTC), newest first; an admin
    may ask for another user's with `user`."""
    with services.db.session() as s:
        user_id = _whose(s, who, user, False)
        assert user_id is not None
        found = invoices_store.list_invoices(s, user_id, utcnow())
    return InvoicesPublic(invoices=[_summary(inv) for inv in found])


def _find_invoice(services: ServicesDep, who: Principal, invoice_id: str) -> InvoicePublic:
    missing = NotFound(f"invoice {invoice_id!r} not found")
    parsed = invoices_store.parse_invoice_id(invoice_id)
    if parsed is None:
        raise missing
    user_id, start = parsed
    # Another user's invoice reads like one that does not exist (admins see every user's).
    if user_id != who.user_id and not who.is_admin:
        raise missing
    with services.db.session() as s:
        username = usage_queries.username_of(s, user_id)
        inv = invoices_store.build_invoice(s, user_id, start, utcnow())
    if inv is None or username is None:
        raise missing
    return _invoice(inv, username)


# Declared before /v1/invoices/{invoice_id}, whose parameter would also match "<id>.html".
@router.get(
    "/v1/invoices/{invoice_id}.html",
    response_model=None,
    responses={
        200: {"content": {"text/html": {}}, "description": "a printable page"},
        **errors(404),
    },
)
def get_invoice_html(invoice_id: str, who: PrincipalDep, services: ServicesDep) -> HTMLResponse:
    """The invoice as a printable page (no outside assets)."""
    return HTMLResponse(render_html(_find_invoice(services, who, invoice_id)))


@router.get("/v1/invoices/{invoice_id}", responses=errors(404))
def get_invoice(invoice_id: str, who: PrincipalDep, services: ServicesDep) -> InvoicePublic:
    return _find_invoice(services, who, invoice_id)


def render_html(inv: InvoicePublic) -> str:
    """A self-contained, printable page; every value is escaped."""
    e = html.escape
    rows = "\n".join(
        "<tr>"
        f"<td>{e(line.description)}</td>"
        f"<td class=num>{e(line.quantity)}</td>"
        f"<td>{e(line.unit)}</td>"
        f"<td class=num>{e(line.unit_price)}</td>"
        f"<td class=num>{e(line.amount)}</td>"
        "</tr>"
        for line in inv.lines
    )
    if not rows:
        rows = '<tr><td colspan=5 class="empty">No charges this week.</td></tr>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Invoice {e(inv.invoice_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #111; }}
h1 {{ font-size: 1.4rem; margin-bottom: .2rem; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 1.5rem; }}
th, td {{ border-bottom: 1px solid #ccc; padding: .4rem .6rem; text-align: left; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tfoot td {{ font-weight: bold; border-bottom: none; }}
.meta {{ color: #444; }}
.status {{ text-transform: uppercase; font-weight: bold; }}
@media print {{ body {{ margin: 0; }} }}
</style></head>
<body>
<h1>Invoice {e(inv.invoice_id)}</h1>
<p class="meta">User: {e(inv.user)}<br>
Period: {e(inv.period_start)} to {e(inv.period_end)} (UTC, Monday to Monday)<br>
Status: <span class="status">{e(inv.status)}</span>{
        " (this week is still open: amounts update as usage is metered)"
        if inv.status == "open"
        else ""
    }</p>
<table>
<thead><tr><th>Description</th><th class=num>Quantity</th><th>Unit</th>
<th class=num>Unit price ({e(inv.currency)})</th><th class=num>Amount ({
        e(inv.currency)
    })</th></tr></thead>
<tbody>
{rows}
</tbody>
<tfoot><tr><td colspan=4>Total</td><td class=num>{e(inv.total)} {e(inv.currency)}</td></tr></tfoot>
</table>
</body></html>
"""
