"""Tessera's Flight SQL service through the clients analysts use: the ADBC Flight SQL driver
(with pandas and polars on top) and pyarrow.flight. Run by tests/e2e/flight.rs against a real
`tessera serve`; prints one line per check and exits non-zero at the first failure.

Environment (set by the Rust test):
  TESSERA_FLIGHT_URI   grpc://host:port or grpc+tls://host:port
  TESSERA_TLS_CA       PEM file of the CA that signed the server's certificate (TLS only)
  AGG_KEY, ROW_KEY     API keys bound to the demo's aggregate-only and row-level licenses
  TABLES               JSON list of the release's tables (both demo licenses grant all)
  SEX_COUNTS           JSON {sex: persons} computed by the test from the Parquet file
  MIN_CELL             the aggregate license's minimum cell size
"""

import json
import os
import sys

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pandas
import polars
import pyarrow
import pyarrow.flight as flight
from adbc_driver_flightsql import DatabaseOptions

URI = os.environ["TESSERA_FLIGHT_URI"]
AGG_KEY = os.environ["AGG_KEY"]
ROW_KEY = os.environ["ROW_KEY"]
TABLES = set(json.loads(os.environ["TABLES"]))
SEX_COUNTS = json.loads(os.environ["SEX_COUNTS"])
MIN_CELL = int(os.environ["MIN_CELL"])
CA = os.environ.get("TESSERA_TLS_CA")
SCHEMA = "demo_natural_history"

checks = 0


def check(condition, what):
    global checks
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1
    print(f"ok: {what}")


def connect(key):
    options = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {key}"}
    if CA:
        with open(CA) as f:
            options[DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
    return flightsql.connect(URI, db_kwargs=options)


def refused(fn):
    """The error text of a call expected to fail."""
    try:
        fn()
    except (adbc_driver_manager.Error, flight.FlightError) as e:
        return str(e)
    return None


def sex_counts(table):
    rows = table.to_pylist()
    return {r["sex"]: r["n"] for r in rows}


# --- ADBC: the catalog as a browser sees it ------------------------------------------------
with connect(ROW_KEY) as conn:
    info = conn.adbc_get_info()
    check(info.get("vendor_name") == "Tessera", f"adbc_get_info names the server ({info.get('vendor_name')})")

    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"] for c in objects}
    check(catalogs == {"tessera"}, f"adbc_get_objects shows one catalog, tessera ({catalogs})")
    schemas = {s["db_schema_name"]: s for c in objects for s in (c["catalog_db_schemas"] or [])}
    check(SCHEMA in schemas, f"the release family is schema {SCHEMA} ({sorted(schemas)})")
    tables = {t["table_name"]: t for t in schemas[SCHEMA]["db_schema_tables"] or []}
    check(set(tables) == TABLES, f"adbc_get_objects lists the licensed tables ({sorted(tables)})")
    person_columns = [c["column_name"] for c in tables["person"]["table_columns"] or []]
    check("person_id" in person_columns, f"adbc_get_objects lists person's columns ({person_columns})")

    filtered = conn.adbc_get_objects(depth="tables", catalog_filter="tessera", db_schema_filter=SCHEMA).read_all()
    check(filtered.num_rows == 1, "adbc_get_objects with catalog and schema filters")

    schema = conn.adbc_get_table_schema("person", catalog_filter="tessera", db_schema_filter=SCHEMA)
    check(schema.names == person_columns, f"adbc_get_table_schema agrees ({schema.names})")

    # --- Row-level: execute, fetch as Arrow, pandas, polars; parameters bound --------------
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM person LIMIT 7")
        t = cur.fetch_arrow_table()
        check(isinstance(t, pyarrow.Table) and t.num_rows == 7, "row-level rows as an Arrow table")
        check(t.schema.names == person_columns, "SELECT * shows the licensed columns")

        cur.execute("SELECT person_id, gender_source_value FROM person ORDER BY person_id LIMIT 5")
        df = cur.fetch_df()
        check(isinstance(df, pandas.DataFrame) and len(df) == 5, "pandas DataFrame from a cursor")

        sex, n = max(SEX_COUNTS.items(), key=lambda kv: kv[1])
        cur.execute(
            "SELECT count(*) AS n FROM person WHERE gender_source_value = ?",
            parameters=(sex,),
        )
        got = cur.fetch_arrow_table().to_pylist()[0]["n"]
        check(got == n, f"a bound parameter ({sex!r}) selects its {n} persons (got {got})")
        cur.execute(
            "SELECT count(*) AS n FROM person WHERE gender_source_value = $1 OR gender_source_value = $2",
            parameters=("no such value", sex),
        )
        got = cur.fetch_arrow_table().to_pylist()[0]["n"]
        check(got == n, f"numbered parameters $1, $2 (got {got})")

        cur.execute("SELECT count(*) AS n FROM condition_occurrence")
        total = cur.fetch_arrow_table().to_pylist()[0]["n"]
        check(total > 0, f"condition_occurrence has rows ({total})")

    frame = polars.read_database("SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY 1", conn)
    check(isinstance(frame, polars.DataFrame) and frame.height == len(SEX_COUNTS), "polars.read_database over ADBC")

    with conn.cursor() as cur:
        e = refused(lambda: cur.execute("DROP TABLE person"))
        check(e is not None and "read_only" in e, f"DDL is refused with its rule ({e})")
        e = refused(lambda: cur.execute("SELECT * FROM read_parquet('/etc/passwd')"))
        check(e is not None, f"no file-reading table functions ({e})")

# --- Aggregate-only: counts by sex, small cells withheld; refusals name the rule --------------
with connect(AGG_KEY) as conn, conn.cursor() as cur:
    cur.execute(
        "SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY gender_source_value"
    )
    table = cur.fetch_arrow_table()
    got = sex_counts(table)
    want = {s: n for s, n in SEX_COUNTS.items() if n >= MIN_CELL}
    check(got == want, f"aggregate counts equal the Parquet file's, groups under {MIN_CELL} withheld ({got})")

    e = refused(lambda: cur.execute("SELECT person_id FROM person LIMIT 3"))
    check(e is not None and "not_aggregate" in e, f"row-level SQL under an aggregate-only license ({e})")
    e = refused(lambda: cur.execute("SELECT person_id, count(*) FROM person GROUP BY person_id"))
    check(e is not None and "group_by_person" in e, f"grouping by person_id ({e})")

# --- Keys: none, forged ------------------------------------------------------------------------
e = refused(lambda: connect("tsk_0000000000000000_00").cursor().execute("SELECT 1"))
check(e is not None and ("UNAUTHENTICATED" in e or "no_credential" in e or "Unauthenticated" in e), f"a forged key ({e})")


# --- pyarrow.flight: Handshake with basic auth, a hand-made Flight SQL command, tickets --------
def pb_len(field, payload):
    """A length-delimited protobuf field."""
    out = bytearray([field << 3 | 2])
    n = len(payload)
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + payload


def statement(sql):
    command = pb_len(1, sql.encode())
    return pb_len(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + pb_len(2, command)


if CA:
    with open(CA, "rb") as f:
        client = flight.FlightClient(URI, tls_root_certs=f.read())
else:
    client = flight.FlightClient(URI)
header = client.authenticate_basic_token(b"analyst", ROW_KEY.encode())
check(header[0].lower() == b"authorization" and header[1].startswith(b"Bearer "), "Handshake answers a bearer token")
options = flight.FlightCallOptions(headers=[header])
info = client.get_flight_info(flight.FlightDescriptor.for_command(statement("SELECT count(*) AS n FROM person")), options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
check(table.to_pylist()[0]["n"] == sum(SEX_COUNTS.values()), "pyarrow.flight: GetFlightInfo + DoGet")

# The output rules' account travels in the result's schema metadata (pyarrow keeps it; the
# ADBC driver hands back the schema GetFlightInfo announced, without it).
withheld = sum(1 for n in SEX_COUNTS.values() if n < MIN_CELL)
agg_info = client.get_flight_info(
    flight.FlightDescriptor.for_command(
        statement("SELECT gender_source_value AS sex, count(*) AS n FROM person GROUP BY 1")
    ),
    flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {AGG_KEY}".encode())]),
)
agg_table = client.do_get(
    agg_info.endpoints[0].ticket,
    flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {AGG_KEY}".encode())]),
).read_all()
meta = agg_table.schema.metadata or {}
check(
    meta.get(b"tessera.groups_suppressed") == str(withheld).encode()
    and meta.get(b"tessera.rows_truncated") == b"false",
    f"the result says {withheld} group(s) were withheld ({meta})",
)

# A ticket presented by someone else is decided again for them: without a key it is refused.
e = refused(lambda: client.do_get(info.endpoints[0].ticket).read_all())
check(e is not None and ("no_credential" in e or "nauthenticated" in e), f"a replayed ticket without a key ({e})")
# Under the aggregate-only key, a row-level ticket obtained with the row-level key is refused.
agg_options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {AGG_KEY}".encode())])
rows_info = client.get_flight_info(flight.FlightDescriptor.for_command(statement("SELECT person_id FROM person")), options)
e = refused(lambda: client.do_get(rows_info.endpoints[0].ticket, agg_options).read_all())
check(e is not None and "not_aggregate" in e, f"a row-level ticket replayed under an aggregate-only key ({e})")

print(f"all {checks} checks passed")
