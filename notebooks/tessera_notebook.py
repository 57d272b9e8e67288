"""Connecting a notebook to a Tessera server, and the few helpers the notebooks share.

Where the server is and which key to use:

- ``TESSERA_FLIGHT_URI`` (``grpc://host:port``) and ``TESSERA_API_KEY``: a server and a key you
  were given. ``TESSERA_HTTP_URI`` (``http://host:port``) is the same server's HTTP API, used to
  save cohort definitions; ``TESSERA_LICENSE`` names the license when the key has several.
- Otherwise the demo's ``demo.json``: ``$TESSERA_DATA_DIR/demo.json``, else
  ``./tessera-data/demo.json`` from the repository root (what ``tessera demo`` writes and
  ``tessera serve`` keeps up to date with the addresses it listens on). Each notebook asks for
  the kind of license it needs (aggregate-only or row-level) and gets that demo organization's
  key.
"""

from __future__ import annotations

import json
import os
import pathlib
import urllib.error
import urllib.request
from dataclasses import dataclass

import adbc_driver_flightsql.dbapi as flightsql
import polars as pl

REPO = pathlib.Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Server:
    flight_uri: str
    http_uri: str | None
    api_key: str
    license: str | None
    mode: str | None

    def __repr__(self) -> str:  # never print the key
        return f"Server(flight_uri={self.flight_uri!r}, http_uri={self.http_uri!r}, license={self.license!r}, mode={self.mode!r})"


def demo_file() -> pathlib.Path:
    data_dir = os.environ.get("TESSERA_DATA_DIR")
    if data_dir:
        return pathlib.Path(data_dir) / "demo.json"
    return REPO / "tessera-data" / "demo.json"


def server(mode: str, private: bool = False) -> Server:
    """The server and key to use; ``mode`` is the kind of license the notebook needs
    (``"aggregate_only"`` or ``"row_level"``) and ``private`` whether it answers under
    differential privacy, used to pick the demo organization."""
    key = os.environ.get("TESSERA_API_KEY")
    uri = os.environ.get("TESSERA_FLIGHT_URI")
    if key and uri:
        return Server(uri, os.environ.get("TESSERA_HTTP_URI"), key, os.environ.get("TESSERA_LICENSE"), None)
    path = demo_file()
    if not path.is_file():
        raise SystemExit(
            f"no server configured: set TESSERA_FLIGHT_URI and TESSERA_API_KEY, or run `tessera demo` "
            f"and `tessera serve` so that {path} exists"
        )
    demo = json.loads(path.read_text())
    orgs = [
        o for o in demo["organizations"]
        if o["mode"] == mode and bool(o.get("differential_privacy", False)) == private
    ]
    if not orgs:
        kind = f"{mode} license" + (" with a privacy budget" if private else "")
        raise SystemExit(f"{path}: no demo organization with a {kind}")
    org = orgs[0]
    services = demo.get("services", {})
    return Server(
        uri or services["flight_sql"],
        os.environ.get("TESSERA_HTTP_URI") or services.get("http"),
        key or org["api_key"],
        os.environ.get("TESSERA_LICENSE") or org["license"],
        mode,
    )


def connect(s: Server):
    """An ADBC Flight SQL connection (DB-API 2.0) presenting the key as a bearer token."""
    kwargs = {"adbc.flight.sql.authorization_header": "Bearer " + s.api_key}
    if s.license:
        kwargs["adbc.flight.sql.rpc.call_header.x-tessera-license"] = s.license
    # Tessera is read-only: there are no transactions to manage.
    return flightsql.connect(s.flight_uri, db_kwargs=kwargs, autocommit=True)


def query(conn, sql: str, params: tuple | None = None) -> pl.DataFrame:
    """Runs one statement and returns the result as a polars DataFrame."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return pl.from_arrow(cur.fetch_arrow_table())


def save_cohort(s: Server, definition: dict) -> dict:
    """Saves a cohort definition on the server (``PUT /v1/cohorts/{name}``). The server
    evaluates it under the license and, from then on, every session of the license has the
    table ``cohort_<name>``. Returns the server's answer (the table, and the cohort's size as
    the license lets it show)."""
    if not s.http_uri:
        raise SystemExit("saving a cohort needs the server's HTTP API: set TESSERA_HTTP_URI")
    url = f"{s.http_uri.rstrip('/')}/v1/cohorts/{definition['name']}"
    if s.license:
        url += f"?license={s.license}"
    request = urllib.request.Request(
        url,
        data=json.dumps(definition).encode(),
        method="PUT",
        headers={"authorization": "Bearer " + s.api_key, "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        body = json.load(e)
        raise RuntimeError(f"the server refused the cohort ({e.code}): {body['error']['message']}") from None


def _pb_len(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    key, n, out = (field << 3) | 2, len(payload), bytearray()
    out.append(key)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


def noisy_query(s: Server, sql: str):
    """Runs one statement under a license with a privacy budget and returns the result, the
    noise's standard deviation of each column that has one, and what the answer cost and left
    (the result's schema metadata, ``tessera.dp.*``). Uses pyarrow's Flight client, which keeps
    the metadata of the result stream (the ADBC driver returns the schema GetFlightInfo
    announced, which carries the noise but not the budget)."""
    from pyarrow import flight

    headers = [(b"authorization", b"Bearer " + s.api_key.encode())]
    if s.license:
        headers.append((b"x-tessera-license", s.license.encode()))
    options = flight.FlightCallOptions(headers=headers)
    command = _pb_len(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + _pb_len(
        2, _pb_len(1, sql.encode())
    )
    client = flight.FlightClient(s.flight_uri)
    try:
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command), options)
        table = client.do_get(info.endpoints[0].ticket, options).read_all()
    finally:
        client.close()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    stddev = {
        f.name: float(f.metadata[b"tessera.dp.stddev"])
        for f in table.schema
        if f.metadata and b"tessera.dp.stddev" in f.metadata
    }
    return pl.from_arrow(table), stddev, {k[len("tessera.dp."):]: v for k, v in meta.items() if k.startswith("tessera.dp.")}


def usage(s: Server) -> dict:
    """The license's usage and, for a license with a privacy budget, the budget
    (``GET /v1/licenses/{id}/usage``)."""
    request = urllib.request.Request(
        f"{s.http_uri.rstrip('/')}/v1/licenses/{s.license}/usage",
        headers={"authorization": "Bearer " + s.api_key},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
