"""phone_e164 and email_canonical against their reference libraries (functions.md §A):
phonenumbers 9.0.42 (the metadata the Rust crate bundles) and email-validator 2.4.0, on
generated messy input, compared value by value over the wire."""
import random

import email_validator
import phonenumbers
import psycopg
import pytest


def messy_phone(rng):
    region = rng.choice(["CN", "US", "GB", "DE", None])
    kind = rng.random()
    if kind < 0.35:
        digits = "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))
        cc = "86"
    elif kind < 0.55:
        digits = rng.choice("23456789") + "".join(rng.choice("0123456789") for _ in range(9))
        cc = "1"
    elif kind < 0.75:
        digits = "7" + "".join(rng.choice("0123456789") for _ in range(9))
        cc = "44"
    else:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 14)))
        cc = rng.choice(["86", "1", "44", "49"])
    style = rng.randint(0, 7)
    if style == 0:
        raw = digits
    elif style == 1:
        raw = f"+{cc} {digits}"
    elif style == 2:
        raw = f"00{cc}{digits}"
    elif style == 3:
        raw = f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    elif style == 4:
        raw = f"+{cc}-{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    elif style == 5:
        raw = f"{digits[:3]}.{digits[3:6]}.{digits[6:]}"
    elif style == 6:
        raw = "".join(chr(ord(c) - ord("0") + ord("０")) if c.isdigit() else c for c in f"+{cc}{digits}")
    else:
        raw = f"  {digits}  "
    return raw, region


def phone_reference(raw, region):
    try:
        n = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(n):
        return None
    return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164)


def messy_email(rng):
    local = rng.choice(["li.wei", "Foo.Bar", "user+tag", "ANN", "o'neil", "x_y-z", "a..b", ".dot", "zhang"])
    domain = rng.choice(["Example.COM", "gmail.com", "mail.qq.com", "münchen.de", "163.com", "bad_domain", "-x.com"])
    raw = f"{local}{rng.randint(0, 99)}@{domain}" if rng.random() < 0.9 else f"{local}{domain}"
    pad = rng.choice(["", " ", "  ", "\t"])
    return pad + raw + rng.choice(["", " "])


def email_reference(raw):
    try:
        v = email_validator.validate_email(raw.strip(), check_deliverability=False)
    except email_validator.EmailNotValidError:
        return None
    return v.local_part.lower() + "@" + v.ascii_domain


def compare(conn, sql, rows, reference):
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.oracle_input (i bigint, raw text, region text)")
        with cur.copy("COPY public.oracle_input (i, raw, region) FROM STDIN") as cp:
            for i, (raw, region) in enumerate(rows):
                cp.write_row((i, raw, region))
        cur.execute(sql)
        ours = dict(cur.fetchall())
        cur.execute("DROP TABLE public.oracle_input")
    assert len(ours) == len(rows)
    diffs = [(raw, region, ours[i], reference(raw, region)) for i, (raw, region) in enumerate(rows)
             if ours[i] != reference(raw, region)]
    return diffs


def test_phone_e164_matches_phonenumbers(server):
    rng = random.Random(20261125)
    rows = [messy_phone(rng) for _ in range(20000)]
    with psycopg.connect(server.url, autocommit=True) as conn:
        diffs = compare(conn, "SELECT i, phone_e164(raw, region) FROM public.oracle_input", rows, phone_reference)
    valid = sum(1 for raw, region in rows if phone_reference(raw, region))
    print(f"phone_e164: compared {len(rows)} generated values ({valid} valid numbers)")
    assert valid > 500
    # Same parser (rlibphonenumber, a port of libphonenumber) and same metadata: no
    # value may differ.
    assert diffs == [], diffs[:20]


def test_email_canonical_matches_email_validator(server):
    rng = random.Random(7)
    rows = [(messy_email(rng), None) for _ in range(2000)]
    with psycopg.connect(server.url, autocommit=True) as conn:
        diffs = compare(conn, "SELECT i, email_canonical(raw) FROM public.oracle_input", rows,
                        lambda raw, _: email_reference(raw))
    valid = sum(1 for raw, _ in rows if email_reference(raw))
    print(f"email_canonical: compared {len(rows)} generated values ({valid} valid)")
    assert valid > 500
    assert diffs == [], diffs[:20]
