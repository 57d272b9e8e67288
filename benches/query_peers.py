"""The query benchmark's peers (run by benches/query.rs with the venv scripts/install-deps makes).

  query_peers.py duckdb DATA_DIR QUERIES_SQL RUNS
      DuckDB (PyPI) over the same Parquet files, read on every run through views: each query
      once to warm up, then RUNS times; prints JSON {name: {"ms": median, "rows": n}}.
  query_peers.py flight-server DATA_DIR TABLE
      A pyarrow Flight server holding TABLE's Parquet file in memory and streaming it whole to
      any DoGet; prints its port on the first line, then serves until stdin closes.
"""

import json
import statistics
import sys
import threading
import time


def queries(path):
    out, name, lines = [], None, []
    for line in open(path):
        if line.startswith("-- name:"):
            if name:
                out.append((name, "".join(lines)))
            name, lines = line.split(":", 1)[1].strip(), []
        elif name and not line.startswith("--"):
            lines.append(line)
    if name:
        out.append((name, "".join(lines)))
    return [(n, q.strip().rstrip(";")) for n, q in out]


def duckdb_bench(data, sql_file, runs):
    import duckdb

    con = duckdb.connect()
    for t in ("person", "condition_occurrence", "measurement"):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/{t}.parquet')")
    def arrow(q):
        # DuckDB's relational API, which hands Arrow over without an extra copy.
        return con.sql(q).to_arrow_table()

    result = {"version": duckdb.__version__}
    for name, q in queries(sql_file):
        arrow(q)
        times = []
        rows = 0
        for _ in range(runs):
            start = time.perf_counter()
            rows = arrow(q).num_rows
            times.append((time.perf_counter() - start) * 1000)
        result[name] = {"ms": statistics.median(times), "rows": rows}
    print(json.dumps(result))


def flight_server(data, table):
    import pyarrow.flight as flight
    import pyarrow.parquet as pq

    held = pq.read_table(f"{data}/{table}.parquet")

    class Server(flight.FlightServerBase):
        def do_get(self, context, ticket):
            return flight.RecordBatchStream(held)

    server = Server("grpc://127.0.0.1:0")
    print(server.port, flush=True)
    threading.Thread(target=server.serve, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "duckdb":
        duckdb_bench(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "flight-server":
        flight_server(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {sys.argv[1]}")
