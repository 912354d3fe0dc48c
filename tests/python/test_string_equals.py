"""`text_column = 'literal'` and `<>` over a Delta table, in a WHERE, a SELECT list, an
aggregate's argument and its FILTER (the places the server compares string views with the
literal's view directly): every answer equals Python's string comparison of the same rows.

Values and literals cover the boundaries of an inline view (up to 12 bytes), shared
prefixes, equal lengths with different tails, multi-byte text, the empty string and NULL.
"""
import random

import psycopg

VALUES = ["", "a", "purchase", "purchasf", "add_to_cart", "twelve_bytes", "twelve_byteZ",
          "message_click", "message_clack", "message_clicks", "mess", "messages_long_value",
          "messages_long_valuf", "页面浏览", "页面浏览了", "a much longer value kept in a data buffer"]
LITERALS = VALUES + ["absent", "message_cl", "a much longer value kept in a data bufferX"]


def test_text_equals_literal_matches_python(server):
    rng = random.Random(7)
    rows = [(i, rng.choice(VALUES + [None])) for i in range(5000)]
    conn = psycopg.connect(server.url, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.se (id bigint, v text)")
        with cur.copy("COPY public.se (id, v) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        compared = 0
        for lit in LITERALS:
            q = lit.replace("'", "''")
            want_eq = sorted(i for i, v in rows if v is not None and v == lit)
            want_ne = sorted(i for i, v in rows if v is not None and v != lit)

            cur.execute(f"SELECT id FROM public.se WHERE v = '{q}' ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == want_eq, lit
            cur.execute(f"SELECT id FROM public.se WHERE '{q}' <> v ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == want_ne, lit

            cur.execute(f"SELECT id, v = '{q}', v <> '{q}' FROM public.se ORDER BY id")
            got = cur.fetchall()
            assert got == [(i, None if v is None else v == lit, None if v is None else v != lit)
                           for i, v in sorted(rows)], lit

            cur.execute(f"""SELECT id % 7, count(*) FILTER (WHERE v = '{q}'),
                                   sum(CASE WHEN v <> '{q}' THEN 1 ELSE 0 END),
                                   bool_or(v = '{q}')
                            FROM public.se GROUP BY 1 ORDER BY 1""")
            want = []
            for g in range(7):
                vs = [v for i, v in rows if i % 7 == g]
                eq = [v == lit for v in vs if v is not None]
                want.append((g, sum(eq), sum(not e for e in eq), any(eq) if eq else None))
            assert cur.fetchall() == want, lit
            compared += 1
    conn.close()
    print(f"compared {compared} literals over {len(rows)} rows")
