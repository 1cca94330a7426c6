#!/usr/bin/env python3
"""Schemathesis against a real `imgsearch serve`, bounded: every operation of /openapi.json fuzzed from its own
schema, with the session token (as the owner's page sends it), checking that no answer is a 5xx and that every
answer fits the schema (status code, content type, body).

    python benchmarks/fuzz_api.py                     # 50 examples an operation (a few minutes on 2 cores)
    python benchmarks/fuzz_api.py --max-examples 200

The library is the test suite's tiny trained model over a folder of coloured shapes (train it once with
`python -m pytest -q tests/test_search.py`); generation runs 2 steps at 16 px so that /api/generate stays quick.
Needs schemathesis (`pip install schemathesis`); prints what it ran and exits with its status.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import tinyclip  # noqa: E402
from tests.conftest import draw_shapes, tiny_env  # noqa: E402

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=50)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-fuzz-api")
    args = parser.parse_args()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        raise SystemExit("schemathesis is not installed (pip install schemathesis)")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tiny = tinyclip.load_or_train(ROOT / ".pytest_cache" / "d" / "tinyclip")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
    env |= tiny_env(tiny) | {
        "IMGSEARCH_HOME": str(args.work / "home"),
        "IMGSEARCH_GENERATE__GENERATOR": "fourier",
        "IMGSEARCH_GENERATE__STEPS": "2",
        "IMGSEARCH_GENERATE__SIZE": "16",
    }
    draw_shapes(args.work / "pictures", per_class=2)
    imgsearch = [sys.executable, "-m", "imgsearch"]
    subprocess.run([*imgsearch, "index", str(args.work / "pictures"), "-q"], env=env, check=True, cwd=ROOT)
    server = subprocess.Popen(
        [*imgsearch, "serve", "--port", "0"], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        login = re.search(r"http://\S+", server.stdout.readline())
        if login is None:
            raise SystemExit("imgsearch serve printed no URL")
        origin = login.group(0).split("?")[0].rstrip("/")
        token = json.loads((args.work / "home" / "serve.json").read_text())["token"]
        _wait(origin)
        command = [
            st, "run", f"{origin}/openapi.json",
            "--checks", ",".join(CHECKS),
            "--max-examples", str(args.max_examples),
            "--header", f"X-Imgsearch-Token: {token}",
            "--header", f"Cookie: imgsearch_token={token}",
            "--request-timeout", "60",
        ]  # fmt: skip
        print("running:", " ".join(c if token not in c else c.replace(token, "<token>") for c in command), flush=True)
        started = time.monotonic()
        done = subprocess.run(command, cwd=args.work)
        print(f"schemathesis finished in {time.monotonic() - started:.0f} s with status {done.returncode}")
        sys.exit(done.returncode)
    finally:
        server.terminate()
        server.wait(30)


def _wait(origin: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{origin}/api/match?q=warm", timeout=5) as answer:
                if json.load(answer).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("imgsearch serve never got ready")


if __name__ == "__main__":
    main()
