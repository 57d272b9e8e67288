"""Runs a command and prints its wall time and peak resident memory as JSON.

usage: python3 peak_rss.py COMMAND [ARG...]

The peak is the child's maximum resident set size from getrusage(RUSAGE_CHILDREN) after it
exits (Linux reports KiB), so it covers the whole run, not samples of it.
"""
import json
import resource
import subprocess
import sys
import time

start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall_s": wall, "max_rss_kib": peak, "returncode": done.returncode}))
