"""Identity resolution on a generated multi-channel data set with ground-truth persons
(`identity_truth.py`): the files go through real sources (CSV, phone_e164, email_canonical),
then the identity run; pairwise precision and recall against the linkable truth are 1.0."""
import json
import os
from collections import Counter

import psycopg

import identity_truth as truth

MAPPING = {
    "pos": "mapping.member_id = 'card', mapping.phone = 'phone_e164(mobile, ''CN'')', mapping.device_id = 'device'",
    "app": "mapping.device_id = 'device', mapping.phone = 'phone_e164(mobile, ''CN'')'",
    "mini": "mapping.openid = 'openid', mapping.phone = 'phone_e164(mobile, ''CN'')'",
    "mail": "mapping.email = 'email_canonical(mail)'",
    "calls": "mapping.phone = 'phone_e164(caller, ''CN'')'",
    "crm": "mapping.member_id = 'card', mapping.email = 'email_canonical(mail)'",
}


def test_precision_and_recall_against_ground_truth(server):
    rows = truth.generate(os.path.join(server.lake, "_landing", "truth"), seed=42, persons=300)
    with psycopg.connect(server.url, autocommit=True) as conn:
        for channel, mapping in MAPPING.items():
            conn.execute(
                f"CREATE SOURCE t_{channel} WITH (kind = 'files', path = '_landing/truth/{channel}/*.csv', "
                f"channel = '{channel}', channel_type = 'online', natural_key = ARRAY['id'], "
                f"mapping.occurred_at = 'at', mapping.event_type = '''visit''', {mapping})"
            )
            r = conn.execute(f"CALL ingest('t_{channel}')").fetchone()
            assert r is not None
        read = conn.execute(
            "SELECT sum(rows_read), sum(rows_accepted) FROM quality.ingest_runs WHERE source LIKE 't_%'"
        ).fetchone()
        assert read[0] == read[1] == sum(len(v) for v in rows.values())
        mode = conn.execute("CALL identity_run()").fetchone()[1]
        assert mode in ("full", "incremental")
        got = conn.execute("SELECT source, person_id, properties FROM unified.touchpoints").fetchall()
        # resolve_person finds a person from any spelling of a phone or e-mail.
        checked = 0
        for source, pid, props in got:
            if pid is None:
                continue
            row = conn.execute(
                "SELECT phone, email FROM unified.touchpoints WHERE person_id = %s AND phone IS NOT NULL LIMIT 1",
                (pid,),
            ).fetchone()
            if row is None:
                continue
            national = row[0][3:]
            for spelling in truth.phone_spellings(national):
                got_p = conn.execute("SELECT resolve_person('phone', %s)", (spelling,)).fetchone()[0]
                assert got_p == pid, (spelling, got_p, pid)
            checked += 1
            if checked == 5:
                break
        assert checked == 5
        assert conn.execute("SELECT resolve_person('phone', '00000000000')").fetchone()[0] is None
        guarded = conn.execute(
            "SELECT identifier_value, person_id FROM quality.identity_diagnostics WHERE reason = 'degree_guard'"
        ).fetchall()

    # The shared tablet is what the degree guard takes out, and nothing else.
    assert [g[0] for g in guarded] == [truth.TABLET]
    tablet_person = guarded[0][1]
    ref = truth.linkable_components(rows)
    # A till row whose only identifier is the tablet (the member gave a junk phone and no
    # card) belongs to the tablet's own person, as documented; those rows are not
    # linkable to anyone and stay out of the pairs.
    tablet_only = [g for g in got if g[1] == tablet_person]
    assert all(ref[(g[0][2:], json.loads(g[2])["ref"])][1] is None for g in tablet_only)
    got = [g for g in got if g[1] != tablet_person]
    ours, same_truth, both, linkable = Counter(), Counter(), Counter(), Counter()
    for source, person, props in got:
        p = json.loads(props)
        tid = (source[2:], p["ref"])
        t, comp = ref[tid]
        if person is not None:
            ours[person] += 1
            both[(person, t)] += 1
        if comp is not None:
            linkable[comp] += 1
        same_truth[t] += 1
    merged = truth.pairs(ours)
    correct = truth.pairs(both)
    # Pairs we merged that are one true person, and linkable pairs we merged: the linkable
    # components never cross persons, so a correct pair inside one is counted once.
    linkable_pairs = truth.pairs(linkable)
    found = 0
    by_comp_person = Counter()
    for source, person, props in got:
        p = json.loads(props)
        t, comp = ref[(source[2:], p["ref"])]
        if comp is not None and person is not None:
            by_comp_person[(comp, person)] += 1
    found = truth.pairs(by_comp_person)
    precision = correct / merged if merged else 1.0
    recall = found / linkable_pairs if linkable_pairs else 1.0
    print(f"identity ground truth: {len(got)} touchpoints (and {len(tablet_only)} of the tablet alone), {len(same_truth)} true persons, "
          f"{len(ours)} resolved persons; {merged} merged pairs, {linkable_pairs} linkable pairs; "
          f"precision {precision:.4f}, recall {recall:.4f}")
    assert linkable_pairs > 1000
    assert precision == 1.0
    assert recall == 1.0
