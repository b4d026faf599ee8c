"""Deterministic AestheticsPro exports for backfill tests and benchmarks: N clients with appointments and invoices.

`python -m tests.ops.backfill_generator OUT_DIR --clients 100000 --seed 7` writes clients.csv, appointments.csv and
invoices.csv (about 10 rows per client). Spellings of headers, dates and money vary by seed, as real exports do.
"""

from __future__ import annotations

import argparse
import csv
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

SERVICES = [("Botox", "Injectables"), ("Dermal Filler", "Injectables"), ("HydraFacial", "Facials"),
            ("Chemical Peel", "Skin"), ("Laser Hair Removal", "Laser"), ("Microneedling", "Skin")]
PROVIDERS = ["Dr. Rivera", "Nurse Chen", "Dr. Patel", "Esthetician Moore"]
FIRST = ["Ana", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
LAST = ["Lopez", "Smith", "Nguyen", "Okafor", "Kim", "Rossi", "Berg", "Haddad"]


@dataclass(frozen=True)
class Spelling:
    client_headers: list[str]
    appointment_headers: list[str]
    invoice_headers: list[str]
    date_style: int  # 0 ISO, 1 US, 2 "YYYY-MM-DD HH:MM:SS"
    money_style: int  # 0 plain, 1 "$1,234.50"


SPELLINGS = [
    Spelling(["Client ID", "First Name", "Last Name", "Email", "Mobile Phone", "Date of Birth", "Location ID"],
             ["Appointment ID", "Client ID", "Start Date Time", "Status", "Services", "Service Type", "Provider",
              "Location ID"],
             ["Invoice ID", "Invoice Number", "Client ID", "Appointment ID", "Invoice Date", "Paid Date",
              "Amount Paid", "Refunded", "Status", "Items", "Location ID"], 0, 1),
    Spelling(["client_id", "first_name", "last_name", "email_address", "phone", "dob", "location_id"],
             ["appt_id", "client_id", "appointment_date_time", "appointment_status", "service_name", "category",
              "staff", "location_id"],
             ["invoice_id", "invoice_no", "client_id", "appt_id", "date", "date_paid", "total", "refund_amount",
              "invoice_status", "line_items", "location_id"], 1, 0),
    Spelling(["CLIENTID", "FIRSTNAME", "LASTNAME", "EMAIL", "CELL", "BIRTHDATE", "LOCATIONID"],
             ["APPTID", "CLIENTID", "STARTTIME", "STATUS", "SERVICES", "SERVICETYPE", "PROVIDER", "LOCATIONID"],
             ["INVOICEID", "INVOICE #", "CLIENTID", "APPOINTMENTID", "INVOICEDATE", "PAIDDATE", "AMOUNTPAID",
              "REFUNDED", "STATUS", "ITEMS", "LOCATIONID"], 2, 1),
]


def _when(dt: datetime, style: int) -> str:
    local = dt.astimezone(timezone(timedelta(hours=-7))).replace(tzinfo=None)  # Phoenix: no DST, naive local time
    if style == 0:
        return local.isoformat(timespec="seconds")
    if style == 1:
        return local.strftime("%m/%d/%Y %H:%M")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def _day(dt: datetime, style: int) -> str:
    local = dt.astimezone(timezone(timedelta(hours=-7)))
    return local.strftime("%m/%d/%Y") if style == 1 else local.date().isoformat()


def _money(amount: Decimal, style: int) -> str:
    return f"${amount:,.2f}" if style == 1 else f"{amount:.2f}"


def _local_day(dt: datetime) -> str:
    return dt.astimezone(timezone(timedelta(hours=-7))).date().isoformat()


def generate(out: Path, clients: int, *, seed: int = 7, as_of: datetime, location: str = "3",
             per_client: int = 10) -> tuple[tuple[Path, Path, Path], dict[str, dict[str, Any]]]:
    """Write the three exports into `out`. About `per_client` rows per client in all.

    Returns the paths and, per client id, what the CRM must show afterwards, from the generator's own numbers:
    email, ltv (Decimal), last_visit and next_visit (local dates, "" for none), patient (has a paid invoice)."""
    truth: dict[str, dict[str, Any]] = {}
    rng = random.Random(seed)
    spelling = SPELLINGS[seed % len(SPELLINGS)]
    ds, ms = spelling.date_style, spelling.money_style
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "clients.csv", out / "appointments.csv", out / "invoices.csv"
    with open(paths[0], "w", newline="") as cf, open(paths[1], "w", newline="") as af, \
            open(paths[2], "w", newline="") as inf:
        cw, aw, iw = csv.writer(cf), csv.writer(af), csv.writer(inf)
        cw.writerow(spelling.client_headers)
        aw.writerow(spelling.appointment_headers)
        iw.writerow(spelling.invoice_headers)
        appt_no, inv_no = 0, 0
        for n in range(clients):
            cid = str(100000 + n)
            ltv, last_visit, next_visit, patient = Decimal("0.00"), None, None, False
            dob = datetime(1950 + rng.randrange(50), 1 + rng.randrange(12), 1 + rng.randrange(28), tzinfo=timezone.utc)
            phone = f"(602) 555-{n % 10000:04d}" if n % 3 else ""
            cw.writerow([cid, rng.choice(FIRST), rng.choice(LAST), f"Patient{n}@Example.com ", phone,
                         dob.strftime("%m/%d/%Y") if ds == 1 else dob.date().isoformat(), location])
            visits = max(1, per_client // 2 - 1 + rng.randrange(3))
            start = as_of - timedelta(days=rng.randrange(400, 1500))
            for v in range(visits):
                appt_no += 1
                aid = f"A{appt_no}"
                start = start + timedelta(days=rng.randrange(10, 90), hours=rng.randrange(-2, 3))
                start = start.replace(minute=rng.choice((0, 15, 30, 45)), second=0, microsecond=0)
                service, service_type = rng.choice(SERVICES)
                future = start > as_of
                roll = rng.random()
                status = "Booked" if future else ("Cancelled" if roll < 0.08 else "No Show" if roll < 0.12
                                                  else "Completed")
                if future:
                    next_visit = min(next_visit or start, start)
                aw.writerow([aid, cid, _when(start, ds), status, service, service_type, rng.choice(PROVIDERS),
                             location])
                if status != "Completed":
                    continue
                inv_no += 1
                amount = Decimal(rng.randrange(5000, 250000)) / 100
                paid = start + timedelta(minutes=rng.randrange(30, 120))
                roll = rng.random()
                inv_status, refunded = "Paid", ""
                patient = True
                last_visit = max(last_visit or start, start)
                if roll < 0.05:
                    half = (amount / 2).quantize(Decimal("0.01"))
                    inv_status, refunded = "Refunded", _money(half, ms)
                    ltv += amount - half
                elif roll < 0.07:
                    inv_status = "Voided"
                else:
                    ltv += amount
                iw.writerow([f"I{inv_no}", f"{20000 + inv_no}", cid, aid, _day(paid, ds), _when(paid, ds),
                             _money(amount, ms), refunded, inv_status, service, location])
            if rng.random() < 0.4:  # a future booking: the next visit
                appt_no += 1
                nxt = (as_of + timedelta(days=rng.randrange(2, 60))).replace(minute=0, second=0, microsecond=0)
                service, service_type = rng.choice(SERVICES)
                aw.writerow([f"A{appt_no}", cid, _when(nxt, ds), "Booked", service, service_type,
                             rng.choice(PROVIDERS), location])
                next_visit = min(next_visit or nxt, nxt)
            truth[cid] = {"email": f"patient{n}@example.com", "ltv": ltv, "patient": patient,
                          "last_visit": _local_day(last_visit) if last_visit else "",
                          "next_visit": _local_day(next_visit) if next_visit else ""}
    return paths, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--location", default="3")
    args = parser.parse_args()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for path in generate(args.out, args.clients, seed=args.seed, as_of=now, location=args.location)[0]:
        print(path)


if __name__ == "__main__":
    main()
