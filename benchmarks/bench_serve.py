#!/usr/bin/env python3
"""`imgsearch serve` latencies: thumbnails (first request, cached), API queries (new and repeated prompt,
more like this), and `imgsearch query` answered by the running server versus by itself.

    python benchmarks/bench_serve.py                 # random-init ViT-B-32, 48 12-MP JPEGs made from samples/
    python benchmarks/bench_serve.py --count 200 --checkpoint /path/model.safetensors

Runs the real server (a subprocess on a free loopback port) and times requests over HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_checkpoint, make_folder


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read()


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms   (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=48, help="camera-sized JPEGs to index")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--checkpoint", type=Path, help="default: a random-init checkpoint of --model")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-serve")
    args = parser.parse_args()

    work = args.work
    folder = make_folder(work / "photos", args.count, (4000, 3000))
    checkpoint = args.checkpoint or make_checkpoint(args.model, work / f"{args.model}-random.safetensors")
    home = work / "home"
    env = {
        **os.environ,
        "IMGSEARCH_HOME": str(home),
        "IMGSEARCH_MODEL__NAME": args.model,
        "IMGSEARCH_MODEL__PRETRAINED": str(checkpoint),
    }
    imgsearch = [sys.executable, "-m", "imgsearch"]
    subprocess.run([*imgsearch, "index", "-q", str(folder)], env=env, check=True)
    for old in (home / "thumbnails").rglob("*.jpg") if (home / "thumbnails").exists() else ():
        old.unlink()

    server = subprocess.Popen([*imgsearch, "serve", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1].rstrip("/")
        status = json.loads(get(url + "/api/status"))
        get(url + "/api/search?q=warm+up")  # the model and vector index are loaded
        ids = [h["id"] for h in json.loads(get(url + f"/api/search?limit={args.count}"))["hits"]]
        print(f"{status['images']} images, {args.model}, CPU threads: {os.cpu_count()}")

        first = [timed(lambda i=i: get(f"{url}/api/images/{i}/thumbnail"), 1)[0] for i in ids]
        cached = [timed(lambda i=i: get(f"{url}/api/images/{i}/thumbnail"), 1)[0] for i in ids]
        size = statistics.mean(len(get(f"{url}/api/images/{i}/thumbnail")) for i in ids)
        print(f"thumbnail, first request (decode 12 MP JPEG, resize, save):  {ms(first)}")
        print(f"thumbnail, cached:                                          {ms(cached)}   {size / 1024:.0f} KB each")

        prompts = [f"a photo number {i} of something" for i in range(10)]
        new = [timed(lambda p=p: get(f"{url}/api/search?q={urllib.parse.quote(p)}&limit=20"), 1)[0] for p in prompts]
        again = [timed(lambda p=p: get(f"{url}/api/search?q={urllib.parse.quote(p)}&limit=20"), 1)[0] for p in prompts]
        similar = [timed(lambda i=i: get(f"{url}/api/images/{i}/similar?limit=20"), 1)[0] for i in ids[:20]]
        print(f"GET /api/search, new prompt (text tower on the server):    {ms(new)}")
        print(f"GET /api/search, repeated prompt:                          {ms(again)}")
        print(f"GET /api/images/ID/similar:                                {ms(similar)}")

        cli = [*imgsearch, "query", "-k", "5", prompts[0]]
        served = timed(lambda: subprocess.run(cli, env=env, check=True, capture_output=True), 5)
        local_env = {**env, "IMGSEARCH_SERVE__QUERY_VIA_SERVER": "false"}
        alone = timed(lambda: subprocess.run(cli, env=local_env, check=True, capture_output=True), 5)
        print(f"imgsearch query (answered by the running server):          {ms(served)}")
        print(f"imgsearch query (answered by itself, prompt cached):       {ms(alone)}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
