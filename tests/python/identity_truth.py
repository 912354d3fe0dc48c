"""A multi-channel data set with ground-truth persons, for identity resolution (issue 4).

Persons have a mobile phone, an e-mail address, usually a member card, a WeChat openid and
a phone (device). Six channels each see some of them, in their own spelling: phones in
seven formats, e-mails with case and space noise, junk placeholders (`00000000000`,
`test@test.com`, `null`, `-1`) instead of real values, and a store tablet that many members
use at the counter. Each row carries its true person in a `truth` column, which ingest
keeps in `properties`.

`linkable_pairs` is the truth the data can support: two touchpoints of one person whose
identifiers are connected through that person's own touchpoints (junk values and the
shared tablet are not that person's identifiers). Normalization here is independent of
Touchlake: `phonenumbers` for phones, `strip().lower()` for e-mails.
"""
import csv
import datetime as dt
import os
import random
from collections import Counter, defaultdict

import phonenumbers

JUNK_PHONES = ["00000000000", "null", "-1"]
JUNK_EMAILS = ["test@test.com", "null", "anonymous"]
TABLET = "STORE-TABLET-01"
BASE = dt.datetime(2026, 3, 1, 9, 0, 0)


def phone_spellings(national):
    """Seven spellings of one CN mobile number."""
    n = national
    return [
        n,
        f"+86{n}",
        f"+86 {n[:3]} {n[3:7]} {n[7:]}",
        f"0086-{n[:3]}-{n[3:7]}-{n[7:]}",
        f"86 {n}",
        f"({n[:3]}) {n[3:7]}-{n[7:]}",
        f"{n[:3]}.{n[3:7]}.{n[7:]}",
    ]


def email_spelling(rng, email):
    local, domain = email.split("@")
    return rng.choice([
        email,
        email.upper(),
        f"  {email} ",
        f"{local.capitalize()}@{domain.upper()}",
    ])


def people(rng, n):
    out = []
    for k in range(n):
        out.append({
            "truth": f"T{k:05d}",
            "phone": f"139{(k * 7919 + 12345) % 100000000:08d}",
            "email": f"user{k}@mail{k % 7}.example.com",
            "member": f"M{k:06d}" if rng.random() < 0.8 else None,
            "openid": f"oW_{k:06d}x" if rng.random() < 0.7 else None,
            "device": f"dev-{k:06d}",
        })
    return out


def generate(folder, seed=42, persons=300):
    """Write one CSV file per channel under `folder/<channel>/`; returns rows by channel
    as dicts (with `truth`)."""
    rng = random.Random(seed)
    ps = people(rng, persons)
    rows = defaultdict(list)
    counter = Counter()

    def ts():
        return (BASE + dt.timedelta(minutes=rng.randrange(60 * 24 * 60))).strftime("%Y-%m-%d %H:%M:%S")

    def phone(p, junk=0.05):
        if rng.random() < junk:
            return rng.choice(JUNK_PHONES)
        return rng.choice(phone_spellings(p["phone"]))

    def email(p, junk=0.05):
        if rng.random() < junk:
            return rng.choice(JUNK_EMAILS)
        return email_spelling(rng, p["email"])

    for p in ps:
        for _ in range(rng.randint(1, 3)):  # store till: member card, sometimes a phone, the tablet
            counter["pos"] += 1
            card = p["member"]
            rows["pos"].append({
                "id": f"pos{counter['pos']}", "at": ts(), "truth": p["truth"],
                "card": card or "",
                "mobile": phone(p) if (card is None or rng.random() < 0.5) else "",
                "device": TABLET if rng.random() < 0.4 else "",
            })
        for _ in range(rng.randint(0, 4)):  # app: own device, login phone
            counter["app"] += 1
            rows["app"].append({
                "id": f"app{counter['app']}", "at": ts(), "truth": p["truth"],
                "device": p["device"], "mobile": phone(p) if rng.random() < 0.6 else "",
            })
        if p["openid"]:
            for _ in range(rng.randint(0, 3)):  # mini program: openid, bound phone
                counter["mini"] += 1
                rows["mini"].append({
                    "id": f"mini{counter['mini']}", "at": ts(), "truth": p["truth"],
                    "openid": p["openid"], "mobile": phone(p) if rng.random() < 0.5 else "",
                })
        for _ in range(rng.randint(0, 3)):  # e-mail campaign
            counter["mail"] += 1
            rows["mail"].append({
                "id": f"mail{counter['mail']}", "at": ts(), "truth": p["truth"], "mail": email(p),
            })
        for _ in range(rng.randint(0, 2)):  # call center: caller id
            counter["calls"] += 1
            rows["calls"].append({
                "id": f"call{counter['calls']}", "at": ts(), "truth": p["truth"], "caller": phone(p, 0.1),
            })
        if p["member"] and rng.random() < 0.7:  # CRM: card and e-mail
            counter["crm"] += 1
            rows["crm"].append({
                "id": f"crm{counter['crm']}", "at": ts(), "truth": p["truth"],
                "card": p["member"], "mail": email(p),
            })
    for channel, rs in rows.items():
        for r in rs:
            r["ref"] = r["id"]  # an unmapped copy: ingest keeps it in `properties`
        os.makedirs(os.path.join(folder, channel), exist_ok=True)
        with open(os.path.join(folder, channel, "part-1.csv"), "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0].keys()))
            w.writeheader()
            w.writerows(rs)
    return rows


# The identifiers each channel's columns hold, for the reference.
COLUMNS = {
    "pos": {"card": "member_id", "mobile": "phone", "device": "device_id"},
    "app": {"device": "device_id", "mobile": "phone"},
    "mini": {"openid": "openid", "mobile": "phone"},
    "mail": {"mail": "email"},
    "calls": {"caller": "phone"},
    "crm": {"card": "member_id", "mail": "email"},
}


def normalize(kind, raw):
    raw = (raw or "").strip()
    if not raw:
        return None
    if kind == "phone":
        try:
            n = phonenumbers.parse(raw, "CN")
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(n):
            return None
        return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)
    if kind == "email":
        v = raw.lower()
        return None if v in JUNK_EMAILS else v
    if kind == "device_id" and raw == TABLET:
        return None  # shared by many: not one person's identifier
    return raw


def linkable_components(rows):
    """touchpoint id → (truth, component): components of each person's own identifiers."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        parent[find(a)] = find(b)

    ids_of = {}
    for channel, rs in rows.items():
        for r in rs:
            ids = []
            for col, kind in COLUMNS[channel].items():
                v = normalize(kind, r[col])
                if v is not None:
                    ids.append((r["truth"], kind, v))
            tid = (channel, r["id"])
            ids_of[tid] = (r["truth"], ids)
            for a in ids[1:]:
                union(ids[0], a)
    out = {}
    for tid, (truth, ids) in ids_of.items():
        out[tid] = (truth, find(ids[0]) if ids else None)
    return out


def pairs(groups):
    """Number of unordered pairs within groups (a Counter of group sizes)."""
    return sum(n * (n - 1) // 2 for n in groups.values())
