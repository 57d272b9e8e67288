#!/usr/bin/env python3
"""Independent checker of a release's event model, written apart from the anonymizer.

    km_check.py check RELEASE_DIR [--m M] [--k K]
        Proves (k, k^m)-anonymity of the released tables: persons are grouped by every person
        column but person_id, as released; a person's items are the distinct tuples of the item
        columns the manifest declares for each event table, read from the Parquet files. Every
        combination of a person's group and up to m of their items must be held by at least k
        persons. Prints one JSON line: persons, groups, itemsets visited, violations by size.
        Exit 1 on any violation.

    km_check.py attack RELEASE_DIR BUNDLES_DIR_OR_TAR [HIERARCHY...] [--m M]
        Plays the attacker: from each source FHIR bundle, the patient's sex, birth year and up
        to m diagnoses with the year of each (the first m by onset), matched against the
        release (a released value is consistent with a known one when it is equal, generalized
        to a band or, by the public hierarchy files given, to an ancestor that holds it, or not
        released). Prints one JSON line with the distribution of
        candidate counts; exit 1 when some patient has between 1 and k - 1 candidates.

    km_check.py table FILE.csv PERSON_COLUMN ITEM_COLUMN K M [GROUP_COLUMNS]
        The same proof for a transaction table (`tessera deid --items` output): one row per
        person and item, grouped by the comma-separated group columns.

    km_check.py selftest
        The enumeration against brute force on random tables.

No identified value is printed: only counts.

How `check` enumerates. For every group, the holders of an itemset S are the persons holding
all of S (a bitset). A depth-first walk extends S by items in a fixed order. Two prunings keep
it exact: (1) an S held by fewer than k persons is a violation; (2) when adding item b leaves
the holders of S unchanged, every extension of S + b has the holders of the same extension of
S, which the walk visits anyway, so S + b is not extended. Every itemset of size <= m that some
person holds is therefore either visited or has the holders of one that is.
"""

import glob
import itertools
import json
import os
import random
import re
import sys
import tarfile

import pyarrow.parquet as pq


def read_table(path, columns):
    t = pq.read_table(path, columns=columns)
    return t.to_pydict()


def groups_and_items(release, manifest):
    ev = manifest["events"]
    person = pq.read_table(os.path.join(release, "person.parquet")).to_pydict()
    qi_cols = [c for c in person if c != "person_id"]
    group_of = {}
    for i, pid in enumerate(person["person_id"]):
        group_of[pid] = tuple(str(person[c][i]) for c in qi_cols)
    items = {pid: set() for pid in person["person_id"]}
    strays = 0
    for table, cols in ev["items"].items():
        path = os.path.join(release, f"{table}.parquet")
        if not os.path.exists(path):
            continue
        d = read_table(path, ["person_id"] + cols)
        for i, pid in enumerate(d["person_id"]):
            item = (table,) + tuple(d[c][i] for c in cols)
            if pid not in items:
                strays += 1
                continue
            items[pid].add(item)
    return group_of, items, strays


def enumerate_group(sets, k, m):
    """Itemsets held by 1..k-1 persons (by size), and the number of itemsets visited."""
    n = len(sets)
    tid = {}
    for p, s in enumerate(sets):
        for it in s:
            tid[it] = tid.get(it, 0) | (1 << p)
    order = sorted(tid, key=repr)
    bits = [tid[i] for i in order]
    everyone = (1 << n) - 1
    bad = [0] * m
    visited = 0
    stack = [(0, everyone, 0)]  # (next item index, holders, size)
    while stack:
        start, holders, size = stack.pop()
        for j in range(start, len(order)):
            h = holders & bits[j]
            if h == 0:
                continue
            visited += 1
            c = bin(h).count("1")
            if c < k:
                bad[size] += 1
            elif size + 1 < m and h != holders:
                stack.append((j + 1, h, size + 1))
    return bad, visited


def check(release, m=None, k=None):
    manifest = json.load(open(os.path.join(release, "manifest.json")))
    ev = manifest.get("events") or {}
    if not ev.get("items"):
        return {"error": "the manifest declares no event model"}, False
    m = m or ev["m"]
    k = k or ev["k"]
    group_of, items, strays = groups_and_items(release, manifest)
    by_group = {}
    for pid, g in group_of.items():
        by_group.setdefault(g, []).append(pid)
    bad = [0] * m
    visited = 0
    small_with_items = 0
    for g, pids in by_group.items():
        sets = [items[p] for p in pids]
        if len(pids) < k and any(sets):
            small_with_items += 1
        b, v = enumerate_group(sets, k, m)
        bad = [x + y for x, y in zip(bad, b)]
        visited += v
    ok = sum(bad) == 0 and strays == 0
    return {
        "k": k,
        "m": m,
        "persons": len(group_of),
        "groups": len(by_group),
        "items": sum(len(s) for s in items.values()),
        "itemsets_visited": visited,
        "violations_by_size": bad,
        "small_groups_with_items": small_with_items,
        "event_rows_without_a_person": strays,
    }, ok


def check_table(path, person_col, item_col, k, m, group_cols):
    import csv

    groups, items = {}, {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            p = row[person_col]
            groups[p] = tuple(row[g] for g in group_cols)
            items.setdefault(p, set())
            if row[item_col]:
                items[p].add(row[item_col])
    by_group = {}
    for p, g in groups.items():
        by_group.setdefault(g, []).append(p)
    bad, visited = [0] * m, 0
    for pids in by_group.values():
        b, v = enumerate_group([items[p] for p in pids], k, m)
        bad = [x + y for x, y in zip(bad, b)]
        visited += v
    out = {
        "k": k,
        "m": m,
        "persons": len(groups),
        "groups": len(by_group),
        "items": sum(len(s) for s in items.values()),
        "itemsets_visited": visited,
        "violations_by_size": bad,
    }
    return out, sum(bad) == 0


def brute(sets, k, m):
    bad = set()
    for s in sets:
        for r in range(1, m + 1):
            for combo in itertools.combinations(sorted(s), r):
                c = sum(1 for t in sets if set(combo) <= t)
                if c < k:
                    bad.add(combo)
    return bad


def selftest():
    rng = random.Random(7)
    for case in range(300):
        n = rng.randint(1, 14)
        sets = [set(rng.sample(range(9), rng.randint(0, 6))) for _ in range(n)]
        k = rng.randint(2, 4)
        m = rng.randint(1, 3)
        bad, _ = enumerate_group(sets, k, m)
        assert (sum(bad) == 0) == (not brute(sets, k, m)), (case, sets, k, m)
    return {"selftest": "ok", "cases": 300}


# --- the attacker --------------------------------------------------------------------------


def bundles(source):
    if os.path.isdir(source):
        for f in sorted(glob.glob(os.path.join(source, "**", "*.json"), recursive=True)):
            with open(f, "rb") as fh:
                yield fh.read()
    else:
        import zstandard  # only for .tar.zst sources

        # Streamed: a resampled demo population is gigabytes unpacked.
        with open(source, "rb") as fh, tarfile.open(
            fileobj=zstandard.ZstdDecompressor().stream_reader(fh), mode="r|"
        ) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    yield tar.extractfile(member).read()


def knowledge(raw, m):
    """Sex, birth year and the first m distinct diagnoses (code, year) of a patient bundle."""
    try:
        b = json.loads(raw)
    except ValueError:
        return None
    sex = year = None
    dx = []
    for e in b.get("entry", []):
        r = e.get("resource", {})
        if r.get("resourceType") == "Patient":
            sex = r.get("gender")
            year = (r.get("birthDate") or "")[:4] or None
        elif r.get("resourceType") == "Condition":
            coding = (r.get("code", {}).get("coding") or [{}])[0]
            onset = r.get("onsetDateTime") or ""
            if coding.get("code") and onset[:4].isdigit():
                dx.append((onset[:10], coding["code"], int(onset[:4])))
    if sex is None:
        return None
    seen, known = set(), []
    for _, code, y in sorted(dx):
        if code not in seen:
            seen.add(code)
            known.append((code, y))
    return sex, (int(year) if year and year.isdigit() else None), known[:m]


def year_consistent(released, year):
    """A released birth year or band (`1950`, `[1950, 1955)`, `*`, null) holds `year`."""
    if released in (None, "", "*") or year is None:
        return True
    digits = [int(x) for x in re.findall(r"\d{4}", str(released))]
    if len(digits) == 1:
        # A single year; "pooled" years read "this year or earlier".
        return year == digits[0] or year <= digits[0] and manifest_pools(released)
    if len(digits) >= 2:
        return digits[0] <= year < digits[1] or (digits[0] <= year <= digits[1])
    return True


POOLED = set()


def manifest_pools(released):
    return str(released) in POOLED


def item_year_consistent(released, year):
    if released in (None, ""):
        return True
    parts = [int(x) for x in str(released).split("-") if x.isdigit()]
    if len(parts) == 1:
        return parts[0] == year
    return parts[0] <= year <= parts[1]


def attack(release, source, m, hierarchies=()):
    manifest = json.load(open(os.path.join(release, "manifest.json")))
    k = (manifest.get("events") or {}).get("k") or manifest["person_deid"]["k"]
    ancestors = {}
    for path in hierarchies:
        for line in open(path):
            line = line.strip()
            if line and not line.startswith("#"):
                cells = [c.strip() for c in line.split(";")]
                ancestors[cells[0]] = set(cells[1:])
    threshold = manifest.get("birth_years_pooled") and (
        int(manifest["consent_snapshot_at"][:4]) - 90
    )
    if threshold:
        POOLED.add(str(threshold))
    person = pq.read_table(os.path.join(release, "person.parquet")).to_pydict()
    cond = read_table(
        os.path.join(release, "condition_occurrence.parquet"),
        ["person_id", "condition_source_value", "condition_start_date"],
    )
    by_person = {}
    for pid, code, y in zip(
        cond["person_id"], cond["condition_source_value"], cond["condition_start_date"]
    ):
        by_person.setdefault(pid, []).append((code, y))
    sexes = person.get("gender_source_value", [None] * len(person["person_id"]))
    births = person.get("birth_date", [None] * len(person["person_id"]))
    counts = []
    for raw in bundles(source):
        kn = knowledge(raw, m)
        if kn is None:
            continue
        sex, year, known = kn
        candidates = 0
        for i, pid in enumerate(person["person_id"]):
            if sexes[i] not in (None, "", "*") and sexes[i] != sex:
                continue
            if not year_consistent(births[i], year):
                continue
            have = by_person.get(pid, [])
            if all(
                any(
                    (c == code or c in ancestors.get(code, ()))
                    and item_year_consistent(ry, y)
                    for c, ry in have
                )
                for code, y in known
            ):
                candidates += 1
        counts.append(candidates)
    hist = {
        "patients": len(counts),
        "zero": sum(1 for c in counts if c == 0),
        "below_k": sum(1 for c in counts if 0 < c < k),
        "at_least_k": sum(1 for c in counts if c >= k),
        "min_nonzero": min([c for c in counts if c > 0], default=0),
        "k": k,
        "m": m,
    }
    return hist, hist["below_k"] == 0


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    args = {}
    rest = []
    i = 1
    while i < len(argv):
        if argv[i].startswith("--"):
            args[argv[i][2:]] = int(argv[i + 1])
            i += 2
        else:
            rest.append(argv[i])
            i += 1
    if argv[0] == "selftest":
        print(json.dumps(selftest()))
        return 0
    if argv[0] == "check":
        out, ok = check(rest[0], args.get("m"), args.get("k"))
    elif argv[0] == "table":
        groups = rest[5].split(",") if len(rest) > 5 and rest[5] else []
        out, ok = check_table(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]), groups)
    elif argv[0] == "attack":
        out, ok = attack(rest[0], rest[1], args.get("m", 3), rest[2:])
    else:
        print(__doc__)
        return 2
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
