"""Executes the notebooks in notebooks/ top to bottom against a running Tessera server, the way
an analyst would, and writes an HTML rendering of each executed notebook. Run by
tests/e2e/notebooks.rs (which starts the server with demo data); usable by hand too:

    python tests/python/run_notebooks.py --out /tmp/notebooks [NAME.ipynb ...]

The server is found as the notebooks find it (TESSERA_FLIGHT_URI / TESSERA_API_KEY, else the
demo's demo.json under TESSERA_DATA_DIR). Fails (exit 1) on the first notebook that is stored
with outputs or raises, printing the failing cell's error.
"""

import argparse
import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert import HTMLExporter

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def stored_clean(nb, name):
    """Notebooks are kept without outputs, so that a diff shows only what someone wrote."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            sys.exit(f"{name}: cell {i} is stored with outputs: clear them before committing (Jupyter: Edit > Clear Outputs of All Cells)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for the executed notebooks and their HTML")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may take")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.names or sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        sys.exit(f"no notebooks in {NOTEBOOKS}")
    # The kernel is this interpreter's (the virtual environment's), whatever PATH says.
    os.environ["PATH"] = str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    for name in names:
        path = NOTEBOOKS / name
        nb = nbformat.read(path, as_version=4)
        stored_clean(nb, name)
        started = time.monotonic()
        client = NotebookClient(
            nb,
            timeout=args.timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        try:
            client.execute()
        except CellExecutionError as e:
            nbformat.write(nb, out / name)
            sys.exit(f"{name} failed:\n{e}")
        nbformat.write(nb, out / name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out / name).with_suffix(".html").write_text(html)
        print(f"ok {name} ({time.monotonic() - started:.1f} s) -> {(out / name).with_suffix('.html')}", flush=True)


if __name__ == "__main__":
    main()
