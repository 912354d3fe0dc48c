"""MATCH_RECOGNIZE (functions.md §E) over the wire: hand-checked cases (a V-shaped price
pattern with PREV, running measures, SKIP TO NEXT ROW with `$`, exclusions, PERMUTE) and a
Python reference on generated partitions: with mutually exclusive DEFINE conditions every row
is one letter, so the standard's preferred match is Python `re`'s (greedy quantifiers,
alternatives left to right); AFTER MATCH SKIP PAST LAST ROW is `finditer`, TO NEXT ROW is
`match` at every row. The test prints how many matches it compared."""
import functools
import random
import re

import psycopg
import pytest


@pytest.fixture
def conn(server):
    with psycopg.connect(server.url, autocommit=True) as c:
        c.execute("CREATE TABLE public.ticker (sym text, day int, price double precision)")
        c.execute("""INSERT INTO public.ticker VALUES ('a',1,10),('a',2,8),('a',3,6),('a',4,7),('a',5,9),
                     ('a',6,5),('a',7,4),('a',8,6),('b',1,3),('b',2,2),('b',3,4)""")
        yield c


def test_hand_checked_cases(conn):
    v = conn.execute("""
        SELECT * FROM public.ticker MATCH_RECOGNIZE (
          PARTITION BY sym ORDER BY day
          MEASURES FIRST(A.day) AS start_day, LAST(DOWN.day) AS bottom_day, LAST(UP.day) AS end_day,
                   COUNT(*) AS n, MATCH_NUMBER() AS m, CLASSIFIER() AS c, LAST(UP.price) - FIRST(A.price) AS delta,
                   ARRAY_AGG(DOWN.price) AS downs, AVG(price) AS avg_price
          ONE ROW PER MATCH AFTER MATCH SKIP PAST LAST ROW
          PATTERN (A DOWN+ UP+)
          DEFINE DOWN AS price < PREV(price), UP AS price > PREV(price)) AS v ORDER BY sym, start_day""").fetchall()
    assert v == [("a", 1, 3, 5, 5, 1, "UP", -1.0, [8.0, 6.0], 8.0),
                 ("a", 6, 7, 8, 3, 2, "UP", 1.0, [4.0], 5.0),
                 ("b", 1, 2, 3, 3, 1, "UP", 1.0, [2.0], 3.0)]
    rows = conn.execute("""
        SELECT sym, day, cls, n, m FROM public.ticker MATCH_RECOGNIZE (
          PARTITION BY sym ORDER BY day MEASURES CLASSIFIER() AS cls, COUNT(*) AS n, MATCH_NUMBER() AS m
          ALL ROWS PER MATCH PATTERN (A DOWN+ UP+)
          DEFINE DOWN AS DOWN.price < PREV(DOWN.price), UP AS UP.price > PREV(UP.price)) ORDER BY sym, day""").fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("a", 1, "A", 1), ("a", 2, "DOWN", 2), ("a", 3, "DOWN", 3), ("a", 4, "UP", 4), ("a", 5, "UP", 5),
        ("a", 6, "A", 1), ("a", 7, "DOWN", 2), ("a", 8, "UP", 3),
        ("b", 1, "A", 1), ("b", 2, "DOWN", 2), ("b", 3, "UP", 3)]
    # TO NEXT ROW with the partition end: every start that reaches the end in 2-3 rows.
    rows = conn.execute("""SELECT sym, d, n FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
        MEASURES COUNT(*) AS n, FIRST(day) AS d AFTER MATCH SKIP TO NEXT ROW PATTERN (A B{1,2} $) DEFINE A AS true)
        ORDER BY 1, 2""").fetchall()
    assert rows == [("a", 6, 3), ("a", 7, 2), ("b", 1, 3), ("b", 2, 2)]
    # Exclusion: the excluded rows are matched but not output.
    rows = conn.execute("""SELECT sym, day FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
        MEASURES COUNT(*) AS n ALL ROWS PER MATCH PATTERN (A ({- B -}) C) DEFINE A AS price >= 6, C AS price > 3)
        WHERE sym = 'a' ORDER BY day""").fetchall()
    assert rows == [("a", 1), ("a", 3), ("a", 4), ("a", 6)]
    # PERMUTE: both orders of A and B.
    n = conn.execute("""SELECT count(*) FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
        MEASURES COUNT(*) AS n PATTERN (PERMUTE(A, B)) DEFINE A AS price > 7, B AS price < 7)""").fetchone()[0]
    assert n == 2  # a: (8, 6) = A B, then (9, 5) = A B
    # No PARTITION BY, a CTE input, and a join on the result.
    got = conn.execute("""WITH t AS (SELECT * FROM public.ticker WHERE sym = 'a')
        SELECT m.first_day, t.price FROM t MATCH_RECOGNIZE (ORDER BY day MEASURES FIRST(day) AS first_day
          PATTERN (UP UP) DEFINE UP AS price > PREV(price)) AS m JOIN t ON t.day = m.first_day""").fetchall()
    assert got == [(4, 7.0)]


def test_subquery_input(conn):
    """`(SELECT …) [AS] t MATCH_RECOGNIZE (…)`, which the SQL parser does not take as is, equals
    the same query over a CTE; also nested, and with the words inside a string."""
    clause = """MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day MEASURES FIRST(day) AS d, COUNT(*) AS n
        PATTERN (DOWN+) DEFINE DOWN AS price < PREV(price))"""
    want = conn.execute(f"""WITH s AS (SELECT * FROM public.ticker WHERE price > 4)
        SELECT * FROM s {clause} AS m ORDER BY 1, 2""").fetchall()
    assert want == [("a", 2, 2), ("a", 6, 1)]  # b has no price above 4
    for form in ["AS s", "s", ""]:
        got = conn.execute(f"""SELECT * FROM (SELECT * FROM public.ticker WHERE price > 4) {form}
            {clause} AS m ORDER BY 1, 2""").fetchall()
        assert got == want, form
    # Nested: the falls of a are 2 rows long at days 2 and 6 (b: 1 row at day 2); the outer
    # clause finds the one run of equal or shorter falls.
    outer = clause.replace("price < PREV(price)", "price <= PREV(price)")
    nested = f"""SELECT sym, d AS day, n AS price, ') match_recognize (' AS t
        FROM (SELECT * FROM public.ticker) AS x {clause} AS inner_m"""
    got = conn.execute(f"SELECT * FROM ({nested}) AS y {outer} AS outer_m").fetchall()
    assert got == [("a", 6, 1)]
    assert got == conn.execute(f"WITH y AS ({nested}) SELECT * FROM y {outer} AS outer_m").fetchall()


def test_reluctant_quantifiers(conn):
    # A X*? UP (X any row): up to the first rise after A; greedy X* reaches the last rise.
    def run(q):
        return conn.execute(f"""
            SELECT sym, n, c FROM public.ticker MATCH_RECOGNIZE (
              PARTITION BY sym ORDER BY day MEASURES COUNT(*) AS n, CLASSIFIER() AS c
              PATTERN (A X{q} UP) DEFINE UP AS price > PREV(price)) ORDER BY sym, n""").fetchall()
    assert run("*?") == [("a", 4, "UP"), ("a", 4, "UP"), ("b", 3, "UP")]
    assert run("*") == [("a", 8, "UP"), ("b", 3, "UP")]
    assert run("{0,5}?") == run("*?")
    short = conn.execute("""
        SELECT sym, n FROM public.ticker MATCH_RECOGNIZE (
          PARTITION BY sym ORDER BY day MEASURES COUNT(*) AS n
          PATTERN (A DOWN*?) DEFINE DOWN AS price < PREV(price)) ORDER BY sym, n""").fetchall()
    assert all(n == 1 for _, n in short) and len(short) == 11
    with pytest.raises(psycopg.errors.SyntaxError):
        conn.execute("SELECT * FROM public.ticker MATCH_RECOGNIZE (ORDER BY day PATTERN (A __touchlake_reluctant__) "
                      "DEFINE A AS true)")
    assert conn.execute("SELECT 1").fetchone()[0] == 1


def test_empty_matches_and_unmatched_rows(conn):
    # DOWN+ over a: 10 8 6 7 9 5 4 6 and b: 3 2 4 (DOWN: a fall from the row before).
    q = """SELECT sym, day, m, c, n, CAST(s AS bigint) AS s FROM public.ticker MATCH_RECOGNIZE (
             PARTITION BY sym ORDER BY day
             MEASURES MATCH_NUMBER() AS m, CLASSIFIER() AS c, COUNT(*) AS n, SUM(price) AS s
             ALL ROWS PER MATCH {mode} PATTERN ({pattern}) DEFINE DOWN AS price < PREV(price))
           ORDER BY sym, day, m"""
    rows = conn.execute(q.format(mode="WITH UNMATCHED ROWS", pattern="DOWN+")).fetchall()
    assert rows == [("a", 1, None, None, None, None), ("a", 2, 1, "DOWN", 1, 8), ("a", 3, 1, "DOWN", 2, 14),
                    ("a", 4, None, None, None, None), ("a", 5, None, None, None, None), ("a", 6, 2, "DOWN", 1, 5),
                    ("a", 7, 2, "DOWN", 2, 9), ("a", 8, None, None, None, None),
                    ("b", 1, None, None, None, None), ("b", 2, 1, "DOWN", 1, 2), ("b", 3, None, None, None, None)]
    nulls = conn.execute("""SELECT count(*) FROM public.ticker MATCH_RECOGNIZE (
             PARTITION BY sym ORDER BY day MEASURES ARRAY_AGG(price) AS a
             ALL ROWS PER MATCH WITH UNMATCHED ROWS PATTERN (DOWN+) DEFINE DOWN AS price < PREV(price))
           WHERE a IS NULL""").fetchone()[0]
    assert nulls == 6
    # DOWN* matches empty where no fall starts: SHOW EMPTY MATCHES gives those as rows with
    # COUNT 0, OMIT (the default) leaves them out; both number them.
    shown = conn.execute(q.format(mode="SHOW EMPTY MATCHES", pattern="DOWN*")).fetchall()
    assert [r for r in shown if r[0] == "a"] == [
        ("a", 1, 1, None, 0, None), ("a", 2, 2, "DOWN", 1, 8), ("a", 3, 2, "DOWN", 2, 14),
        ("a", 4, 3, None, 0, None), ("a", 5, 4, None, 0, None), ("a", 6, 5, "DOWN", 1, 5),
        ("a", 7, 5, "DOWN", 2, 9), ("a", 8, 6, None, 0, None)]
    omitted = conn.execute(q.format(mode="OMIT EMPTY MATCHES", pattern="DOWN*")).fetchall()
    assert omitted == [r for r in shown if r[4]]
    # WITH UNMATCHED ROWS shows empty matches too, and then no row is unmatched.
    assert conn.execute(q.format(mode="WITH UNMATCHED ROWS", pattern="DOWN*")).fetchall() == shown


def test_errors_keep_the_connection(conn):
    cases = [
        ("SELECT * FROM public.ticker MATCH_RECOGNIZE (ORDER BY day MEASURES LAST(zzz) AS q PATTERN (A) DEFINE A AS true)",
         psycopg.errors.UndefinedColumn),
        ("SELECT * FROM public.ticker MATCH_RECOGNIZE (ORDER BY day PATTERN (A) )", psycopg.errors.SyntaxError),
        ("SELECT * FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym || 'x' ORDER BY day MEASURES COUNT(*) AS n "
         "PATTERN (A) DEFINE A AS true)", psycopg.errors.FeatureNotSupported),
        ("SELECT * FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day MEASURES COUNT(*) AS n "
         "AFTER MATCH SKIP TO FIRST A PATTERN (A B*) DEFINE B AS true)", psycopg.errors.InvalidParameterValue),
        ("SELECT * FROM public.ticker MATCH_RECOGNIZE (ORDER BY day PATTERN (A) DEFINE Z AS true)",
         psycopg.errors.SyntaxError),
    ]
    for sql, err in cases:
        with pytest.raises(err):
            conn.execute(sql)
    assert conn.execute("SELECT 1").fetchone()[0] == 1


def random_pattern(rng, reluctant=False):
    """A pattern over A–D that cannot match the empty string, as (SQL, Python regex); with
    `reluctant`, half the quantifiers are reluctant (`*?`, `+?`, `??`, `{n,m}?`)."""
    elems_sql, elems_py = [], []
    for i in range(rng.randint(2, 4)):
        if rng.random() < 0.3:
            a, b = rng.sample("ABCD", 2)
            atom_sql, atom_py = f"({a} | {b})", f"(?:{a}|{b})"
        else:
            atom_sql = atom_py = rng.choice("ABCD")
        q = rng.choice(["", "", "+", "*", "?", "{1,2}", "{2}", "{0,3}"]) if i else rng.choice(["", "+", "{2}"])
        if reluctant and q and rng.random() < 0.5:
            q += "?"
        elems_sql.append(atom_sql + q)
        elems_py.append(atom_py + q)
    return " ".join(elems_sql), "".join(elems_py)


@pytest.mark.parametrize("reluctant", [False, True])
def test_matches_python_re_on_generated_partitions(conn, reluctant):
    rng = random.Random(17 + reluctant)
    rows = []
    for pid in range(60):
        for day in range(rng.randint(0, 30)):
            rows.append((pid, day, rng.choice("AABCD")))
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.ev (pid bigint, day bigint, ev text)")
        with cur.copy("COPY public.ev FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    text = {}
    for pid, day, ev in rows:
        text[pid] = text.get(pid, "") + ev
    compared = 0
    reluctant_seen = 0
    for _ in range(25):
        sql_pat, py_pat = random_pattern(rng, reluctant)
        reluctant_seen += sql_pat.count("?") - sql_pat.count("??") if reluctant else 0
        define = "DEFINE " + ", ".join(f"{x} AS ev = '{x}'" for x in "ABCD" if x in sql_pat)
        rx = re.compile(py_pat)
        for skip in ["PAST LAST ROW", "TO NEXT ROW"]:
            want = []
            for pid, s in sorted(text.items()):
                if skip == "PAST LAST ROW":
                    spans = [m.span() for m in rx.finditer(s)]
                else:
                    spans = [m.span() for m in (rx.match(s, p) for p in range(len(s))) if m]
                for k, (a, b) in enumerate(spans):
                    want.append((pid, k + 1, a, b - 1, b - a, s[b - 1]))
            got = conn.execute(f"""SELECT pid, m, f, l, n, c FROM public.ev MATCH_RECOGNIZE (
                PARTITION BY pid ORDER BY day
                MEASURES MATCH_NUMBER() AS m, FIRST(day) AS f, LAST(day) AS l, COUNT(*) AS n, CLASSIFIER() AS c
                AFTER MATCH SKIP {skip} PATTERN ({sql_pat}) {define}) ORDER BY pid, m""").fetchall()
            assert got == want, (sql_pat, skip, [g for g in got if g not in want][:3], [w for w in want if w not in got][:3])
            compared += len(want)
        # ALL ROWS PER MATCH: every matched row with its symbol and running count.
        want = []
        for pid, s in sorted(text.items()):
            for k, m in enumerate(rx.finditer(s)):
                for i in range(m.start(), m.end()):
                    want.append((pid, i, s[i], k + 1, i - m.start() + 1))
        got = conn.execute(f"""SELECT pid, day, c, m, n FROM public.ev MATCH_RECOGNIZE (
            PARTITION BY pid ORDER BY day MEASURES CLASSIFIER() AS c, MATCH_NUMBER() AS m, COUNT(*) AS n
            ALL ROWS PER MATCH PATTERN ({sql_pat}) {define}) ORDER BY pid, day""").fetchall()
        assert got == want, (sql_pat, "all rows")
    assert not reluctant or reluctant_seen > 5, reluctant_seen
    print(f"MATCH_RECOGNIZE: {compared} matches over 25 generated patterns compared with Python re"
          + (f" ({reluctant_seen} reluctant quantifiers)" if reluctant else ""))


def test_npath_is_match_recognize(conn):
    """NPATH desugars to MATCH_RECOGNIZE: the same rows as the spelled-out clause, and the
    nPath modes map to the skip rules (checked against Python re as above)."""
    rng = random.Random(5)
    rows = [(pid, day, rng.choice("ABC")) for pid in range(40) for day in range(rng.randint(0, 20))]
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.np (pid bigint, day bigint, page text)")
        with cur.copy("COPY public.np FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    text = {}
    for pid, day, page in rows:
        text[pid] = text.get(pid, "") + page
    rx = re.compile("AB*C")
    compared = 0
    for mode, skip in [("NONOVERLAPPING", "PAST LAST ROW"), ("OVERLAPPING", "TO NEXT ROW")]:
        got = conn.execute(f"""SELECT pid, first_day, n, path FROM NPATH(ON public.np PARTITION BY pid ORDER BY day
            MODE({mode}) PATTERN('A.B*.C') SYMBOLS(page = 'A' AS A, page = 'B' AS B, page = 'C' AS C)
            RESULT(FIRST(day OF A) AS first_day, COUNT(* OF B) AS n, ACCUMULATE(page OF ANY(A, B, C)) AS path))
            ORDER BY pid, first_day""").fetchall()
        same = conn.execute(f"""SELECT pid, first_day, n, path FROM public.np MATCH_RECOGNIZE (PARTITION BY pid
            ORDER BY day MEASURES FIRST(A.day) AS first_day, COUNT(B.*) AS n, ARRAY_AGG(page) AS path
            AFTER MATCH SKIP {skip} PATTERN (A B* C)
            DEFINE A AS page = 'A', B AS page = 'B', C AS page = 'C') ORDER BY pid, first_day""").fetchall()
        assert got == same
        want = []
        for pid, s in sorted(text.items()):
            spans = ([m.span() for m in rx.finditer(s)] if mode == "NONOVERLAPPING"
                     else [m.span() for m in (rx.match(s, p) for p in range(len(s))) if m])
            want += [(pid, a, b - a - 2, list(s[a:b])) for a, b in spans]
        assert got == want
        compared += len(want)
    with pytest.raises(psycopg.errors.SyntaxError):
        conn.execute("SELECT * FROM NPATH(ON public.np ORDER BY day PATTERN('A') SYMBOLS(true AS A) "
                     "RESULT(LAST_NOTNULL(day OF A) AS d))")
    print(f"NPATH: {compared} matches equal MATCH_RECOGNIZE and Python re")


def test_define_reads_the_match_so_far(conn):
    """DEFINE conditions over other symbols' rows, FIRST/LAST, PREV of those and running
    aggregates (SQL:2016: the row being tested counts as the defined symbol's), and PREV/NEXT
    and FIRST/LAST offsets in MEASURES; hand-checked on a: 10 8 6 7 9 5 4 6, b: 3 2 4."""
    def run(measures, pattern, define, rows="ONE ROW PER MATCH"):
        return conn.execute(f"""SELECT * FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
            MEASURES {measures} {rows} PATTERN ({pattern}) DEFINE {define}) ORDER BY 1, 2""").fetchall()
    # B above the price at A (not above the row before): a: A=10 finds none; A=8 (day 2): 6 is
    # not above; A=6: 7, 9 then 5; A=5: 4 no; A=4: 6; b: A=3: 2 no; A=2: 4.
    assert run("FIRST(A.day) AS s, LAST(B.day) AS e", "A B+", "B AS B.price > A.price") == [
        ("a", 3, 5), ("a", 7, 8), ("b", 2, 3)]
    # Running SUM over the match including the row being tested: 10+8+6 = 24 < 25 stops at 7.
    assert run("FIRST(day) AS s, COUNT(*) AS n, SUM(price) AS total", "A B*", "B AS SUM(price) < 25") == [
        ("a", 1, 3, 24.0), ("a", 4, 3, 21.0), ("a", 7, 2, 10.0), ("b", 1, 3, 9.0)]
    # FIRST of another symbol, LAST with an offset, COUNT of a symbol's rows.
    assert run("FIRST(A.day) AS s, COUNT(*) AS n", "A B{2,}",
               "B AS B.price < FIRST(A.price) AND (LAST(B.price, 1) IS NULL OR B.price <> LAST(B.price, 1)) "
               "AND COUNT(B.*) <= 3") == [("a", 1, 4), ("a", 5, 4)]
    # PREV of another symbol's row: B above the row before A's.
    assert run("FIRST(A.day) AS s, LAST(B.day) AS e", "A B", "B AS B.price > PREV(A.price)") == [
        ("a", 4, 5), ("a", 7, 8), ("b", 2, 3)]
    # MEASURES: PREV/NEXT of the match's rows and of FIRST/LAST, FIRST/LAST with offsets.
    assert run("FIRST(day) AS s, PREV(FIRST(price)) AS before, NEXT(LAST(price)) AS after, "
               "PREV(price, 2) AS p2, FIRST(price, 1) AS second, LAST(DOWN.price, 1) AS down2",
               "DOWN{2,}", "DOWN AS price < PREV(price)") == [
        ("a", 2, 10.0, 7.0, 10.0, 6.0, 8.0), ("a", 6, 9.0, 6.0, 9.0, 4.0, 5.0)]
    # Running PREV/NEXT in ALL ROWS PER MATCH: relative to each row; outside the partition NULL.
    rows = conn.execute("""SELECT sym, day, p, nx FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
        MEASURES PREV(price) AS p, NEXT(price) AS nx ALL ROWS PER MATCH PATTERN (A B+) DEFINE B AS B.price > A.price)
        ORDER BY sym, day""").fetchall()
    assert rows == [("a", 3, 8.0, 7.0), ("a", 4, 6.0, 9.0), ("a", 5, 7.0, 5.0), ("a", 7, 5.0, 6.0),
                    ("a", 8, 4.0, None), ("b", 2, 3.0, 4.0), ("b", 3, 2.0, None)]
    # CLASSIFIER() in DEFINE: the row being tested is the defined symbol's; PREV(CLASSIFIER())
    # the symbol of the row before, if in the match. B's first row needs A before it, the
    # next ones a rise: a: (10 8), (6 7 9), (5 4 6); b: (3 2 4).
    assert run("FIRST(day) AS s, COUNT(*) AS n", "A B+",
               "B AS PREV(CLASSIFIER()) = 'A' OR B.price > PREV(B.price)") == [
        ("a", 1, 2), ("a", 3, 3), ("a", 6, 3), ("b", 1, 3)]
    assert run("COUNT(*) AS n", "A B*", "B AS CLASSIFIER() = 'A'") == [("a", 1)] * 8 + [("b", 1)] * 3
    # MATCH_NUMBER() in DEFINE: the number of the match being attempted; two per partition.
    assert run("MATCH_NUMBER() AS m, FIRST(day) AS d", "A", "A AS MATCH_NUMBER() <= 2") == [
        ("a", 1, 1), ("a", 2, 2), ("b", 1, 1), ("b", 2, 2)]
    # Errors: the connection stays up.
    for define, err in [("B AS B.price > A.sym", psycopg.errors.DatatypeMismatch),
                        ("B AS B.price / (A.price - A.price) > 1", psycopg.errors.DivisionByZero),
                        ("B AS FIRST(CLASSIFIER()) = 'A'", psycopg.errors.FeatureNotSupported),
                        ("B AS coalesce(A.price, B.price) > 1", psycopg.errors.FeatureNotSupported),
                        ("B AS SUM(A.price + B.price) > 1", psycopg.errors.SyntaxError),
                        ("B AS PREV(A.price, -1) > 1", psycopg.errors.SyntaxError)]:
        with pytest.raises(err):
            conn.execute(f"""SELECT * FROM public.ticker MATCH_RECOGNIZE (PARTITION BY sym ORDER BY day
                MEASURES COUNT(*) AS n PATTERN (A B) DEFINE {define})""")
    assert conn.execute("SELECT 1").fetchone()[0] == 1


class _Ctx:
    """The partial match as the Python reference sees it."""

    def __init__(self, part, path, pos, sym, number=1):
        self.part, self.path, self.pos, self.sym, self.number = part, path, pos, sym, number

    def classifier(self, shift):
        """The symbol of the row `shift` from the one being tested, if in the match."""
        if shift == 0:
            return self.sym
        return next((s for r, s in self.path if r == self.pos + shift), None)

    def rows(self, sym=None):
        out = [r for r, s in self.path if sym is None or s == sym]
        return out + ([self.pos] if sym is None or sym == self.sym else [])

    def at(self, row, col):
        return self.part[row][col] if row is not None and 0 <= row < len(self.part) else None

    def last(self, sym, col, n=0, shift=0):
        r = self.rows(sym)
        return self.at(r[-1 - n] + shift, col) if len(r) > n else None

    def first(self, sym, col, n=0, shift=0):
        r = self.rows(sym)
        return self.at(r[n] + shift, col) if len(r) > n else None

    def agg(self, fn, sym, col):
        vals = [self.part[r][col] for r in self.rows(sym)]
        return fn(vals) if vals else None


def _cmp(a, op, b):
    if a is None or b is None:
        return None
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b, "=": a == b, "<>": a != b}[op]


def _and(a, b):
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a, b):
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


# DEFINE templates over `o` (another symbol of the pattern): (SQL, reference); the symbol
# being defined is X. Columns: price (1..20), qty (1..5).
DEFINES = [
    ("X.price > {o}.price", lambda c, o: _cmp(c.last(c.sym, "price"), ">", c.last(o, "price"))),
    ("price <= LAST({o}.price)", lambda c, o: _cmp(c.last(c.sym, "price"), "<=", c.last(o, "price"))),
    ("SUM(X.qty) <= 9", lambda c, o: _cmp(c.agg(sum, c.sym, "qty"), "<=", 9)),
    ("price >= FIRST(price)", lambda c, o: _cmp(c.last(c.sym, "price"), ">=", c.first(None, "price"))),
    ("COUNT({o}.*) < 2", lambda c, o: len(c.rows(o)) < 2),
    ("PREV({o}.price) IS NULL OR price > PREV({o}.price)",
     lambda c, o: _or(c.last(o, "price", shift=-1) is None,
                      _cmp(c.last(c.sym, "price"), ">", c.last(o, "price", shift=-1)))),
    ("AVG(price) > 9", lambda c, o: _cmp(c.agg(lambda v: sum(v) / len(v), None, "price"), ">", 9)),
    ("LAST({o}.price, 1) IS NOT NULL AND price < 12",
     lambda c, o: _and(c.last(o, "price", 1) is not None, _cmp(c.last(c.sym, "price"), "<", 12))),
    ("X.price + {o}.price BETWEEN 12 AND 26",
     lambda c, o: (lambda s: None if s is None else 12 <= s <= 26)(
         None if c.last(o, "price") is None else c.last(c.sym, "price") + c.last(o, "price"))),
    ("MAX(price) - MIN(price) <= 8",
     lambda c, o: _cmp(c.agg(max, None, "price") - c.agg(min, None, "price"), "<=", 8)),
    ("NEXT(price) > price", lambda c, o: _cmp(c.at(c.pos + 1, "price"), ">", c.last(c.sym, "price"))),
    ("PREV(CLASSIFIER()) IS NULL OR PREV(CLASSIFIER()) <> '{o}'",
     lambda c, o: _or(c.classifier(-1) is None, _cmp(c.classifier(-1), "<>", o))),
    ("MATCH_NUMBER() % 2 = 1 OR price > 10", lambda c, o: _or(c.number % 2 == 1, _cmp(c.last(c.sym, "price"), ">", 10))),
    ("FIRST({o}.qty, 1) IS NULL OR qty = FIRST({o}.qty, 1)",
     lambda c, o: _or(c.first(o, "qty", 1) is None, _cmp(c.last(c.sym, "qty"), "=", c.first(o, "qty", 1)))),
]


def _random_ast(rng):
    """A pattern over A–D as (SQL, tree); the first element cannot be skipped and repetition
    bodies are single rows, so no match is empty."""
    sql, tree = [], []
    for i in range(rng.randint(2, 4)):
        if rng.random() < 0.3:
            a, b = rng.sample("ABCD", 2)
            atom_sql, atom = f"({a} | {b})", ("alt", [("sym", a), ("sym", b)])
        else:
            s = rng.choice("ABCD")
            atom_sql, atom = s, ("sym", s)
        q = rng.choice(["", "", "+", "*", "?", "{1,2}", "{0,3}"]) if i else rng.choice(["", "+"])
        greedy = not (q and rng.random() < 0.3)
        bounds = {"": None, "+": (1, None), "*": (0, None), "?": (0, 1), "{1,2}": (1, 2), "{0,3}": (0, 3)}[q]
        sql.append(atom_sql + q + ("" if greedy or not q else "?"))
        tree.append(atom if bounds is None else ("rep", atom, bounds[0], bounds[1], greedy))
    return " ".join(sql), ("cat", tree)


def _matches(node, pos, path, test):
    """Matches of `node` from `pos` after `path`, in the standard's preference order."""
    kind = node[0]
    if kind == "sym":
        if test(node[1], pos, path):
            yield pos + 1, path + [(pos, node[1])]
    elif kind == "alt":
        for sub in node[1]:
            yield from _matches(sub, pos, path, test)
    elif kind == "cat":
        def cat(i, pos, path):
            if i == len(node[1]):
                yield pos, path
                return
            for p2, path2 in _matches(node[1][i], pos, path, test):
                yield from cat(i + 1, p2, path2)
        yield from cat(0, pos, path)
    else:
        _, sub, lo, hi, greedy = node

        def rep(k, pos, path):
            more = hi is None or k < hi
            if not greedy and k >= lo:
                yield pos, path
            if more:
                for p2, path2 in _matches(sub, pos, path, test):
                    yield from rep(k + 1, p2, path2)
            if greedy and k >= lo:
                yield pos, path
        yield from rep(0, pos, path)


def test_define_over_the_match_matches_a_python_reference(conn):
    rng = random.Random(23)
    parts = {}
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.dm (pid bigint, day bigint, price bigint, qty bigint)")
        with cur.copy("COPY public.dm FROM STDIN") as cp:
            for pid in range(40):
                parts[pid] = []
                for day in range(rng.randint(0, 14)):
                    r = {"day": day, "price": rng.randint(1, 20), "qty": rng.randint(1, 5)}
                    parts[pid].append(r)
                    cp.write_row((pid, day, r["price"], r["qty"]))
    compared = 0
    for case in range(40):
        sql_pat, tree = _random_ast(rng)
        present = [s for s in "ABCD" if s in sql_pat]
        defs, refs = {}, []
        for s in present:
            if rng.random() < 0.2:
                continue  # undefined: TRUE
            k = rng.randrange(len(DEFINES))
            o = rng.choice(present)
            defs[s] = (k, o)
            refs.append(f"{s} AS " + DEFINES[k][0].format(o=o).replace("X.", f"{s}."))
        define = ("DEFINE " + ", ".join(refs)) if refs else "DEFINE A AS true"
        for skip in ["PAST LAST ROW", "TO NEXT ROW"]:
            want, labels = [], []
            for pid, part in sorted(parts.items()):
                def test(sym, pos, path, part=part, number=None):
                    if pos >= len(part):
                        return False
                    if sym not in defs:
                        return True
                    k, o = defs[sym]
                    return DEFINES[k][1](_Ctx(part, path, pos, sym, number), o) is True
                start, number = 0, 0
                while start < len(part):
                    attempt = functools.partial(test, number=number + 1)
                    m = next(iter(_matches(tree, start, [], attempt)), None)
                    if m is None:
                        start += 1
                        continue
                    number += 1
                    end, path = m
                    prices = [part[r]["price"] for r, _ in path]
                    want.append((pid, number, part[path[0][0]]["day"], part[path[-1][0]]["day"], len(path),
                                 path[-1][1], sum(prices)))
                    if skip == "PAST LAST ROW":
                        labels += [(pid, part[r]["day"], s, number) for r, s in path]
                    start = end if skip == "PAST LAST ROW" else start + 1
            got = conn.execute(f"""SELECT pid, m, f, l, n, c, s FROM public.dm MATCH_RECOGNIZE (
                PARTITION BY pid ORDER BY day
                MEASURES MATCH_NUMBER() AS m, FIRST(day) AS f, LAST(day) AS l, COUNT(*) AS n,
                         CLASSIFIER() AS c, SUM(price) AS s
                AFTER MATCH SKIP {skip} PATTERN ({sql_pat}) {define}) ORDER BY pid, m""").fetchall()
            got = [g[:6] + (int(g[6]),) for g in got]
            assert got == want, (sql_pat, define, skip, [g for g in got if g not in want][:3],
                                 [w for w in want if w not in got][:3])
            compared += len(want)
            if skip == "PAST LAST ROW":
                # Every matched row's symbol.
                got = conn.execute(f"""SELECT pid, day, c, m FROM public.dm MATCH_RECOGNIZE (
                    PARTITION BY pid ORDER BY day MEASURES CLASSIFIER() AS c, MATCH_NUMBER() AS m
                    ALL ROWS PER MATCH PATTERN ({sql_pat}) {define}) ORDER BY pid, day""").fetchall()
                assert got == labels, (sql_pat, define)
    assert compared > 500, compared
    print(f"MATCH_RECOGNIZE DEFINE over the match: {compared} matches over 40 generated patterns "
          f"× {len(DEFINES)} condition templates equal the Python reference")
