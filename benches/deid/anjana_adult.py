"""anjana (PyPI) on an Adult table: the peer of `tessera deid` in benches/deid.rs.

usage: python anjana_adult.py DATA_CSV HIERARCHY_DIR K SUPP_PERCENT OUT_CSV QI [QI...]

Reads the `;`-separated table as text, the ARX hierarchy files adult_hierarchy_<qi>.csv as
anjana wants them ({column: {level: Series}}), runs anjana.anonymity.k_anonymity, writes the
result, and prints the transformation anjana chose as JSON.
"""
import json
import sys
import time

import pandas as pd
from anjana.anonymity import k_anonymity
from anjana.anonymity.utils import utils

data_csv, hier_dir, k, supp, out_csv = sys.argv[1:6]
qis = sys.argv[6:]
df = pd.read_csv(data_csv, sep=";", dtype=str, keep_default_na=False)
hierarchies = {}
for qi in qis:
    h = pd.read_csv(f"{hier_dir}/adult_hierarchy_{qi}.csv", sep=";", header=None,
                    dtype=str, keep_default_na=False)
    hierarchies[qi] = {i: h[i] for i in h.columns}
start = time.perf_counter()
anon = k_anonymity(df, [], qis, int(k), float(supp), hierarchies)
elapsed = time.perf_counter() - start
levels = utils.get_transformation(anon, qis, hierarchies)
anon.to_csv(out_csv, sep=";", index=False)
print(json.dumps({"levels": [int(x) for x in levels], "anonymize_s": elapsed}))
