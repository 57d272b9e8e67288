"""Independent check of a released table with pyCANON (PyPI `pycanon`).

Usage: pycanon_check.py FILE DELIMITER QI[,QI...] [SENSITIVE]

Prints JSON: {"k": ..., "l": ..., "t": ..., "rows": ...}. Rows whose quasi-identifiers are all
`*` (suppressed records) are left out first, as ARX's own risk analysis does. The CSV is read
as text with pandas' NA guessing off: pyCANON drops rows with empty quasi-identifiers otherwise.
"""
import json
import sys

import pandas as pd
from pycanon import anonymity


def main() -> None:
    path, delimiter, qis = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    sensitive = sys.argv[4:5]
    df = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False)
    released = df[~(df[qis] == "*").all(axis=1)].reset_index(drop=True)
    out = {"rows": int(len(released)), "k": int(anonymity.k_anonymity(released, qis))}
    if sensitive:
        out["l"] = int(anonymity.l_diversity(released, qis, sensitive))
        out["t"] = float(anonymity.t_closeness(released, qis, sensitive))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
