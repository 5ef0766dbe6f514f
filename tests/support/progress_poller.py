"""The operator's progress poll, run inside the pod view: GET the URL every interval with the
operator's timeout, parse with the operator's ProgressReport, append each outcome as a line.

Usage: progress_poller.py URL INTERVAL TIMEOUT OUT.jsonl (stops when OUT's folder has ``done``).
"""

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rlhf_api.progress import ProgressReport


def main() -> None:
    url, interval, timeout, out = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    done = out.parent / "done"
    with out.open("a") as sink:
        while not done.exists():
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    line = json.loads(ProgressReport.from_json(response.read()).to_json())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                line = {"error": str(exc)}
            sink.write(json.dumps({"t": time.time(), **line}) + "\n")
            sink.flush()
            time.sleep(interval)


if __name__ == "__main__":
    main()
