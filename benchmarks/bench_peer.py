#!/usr/bin/env python3
"""imgsearch against rclip, the closest peer, in one run: the same folder, the same architecture and weights
(rclip's ViT-B-32-256, random init), the same machine; each tool timed as whole processes, as a user sees them.

    # once: the peer and its weights (see ../shared/bench/README.md)
    python benchmarks/bench_peer.py --bench ../shared/bench          # 96 12-MP JPEGs made from samples/
    python benchmarks/bench_peer.py --bench ../shared/bench --folder ~/Pictures/some-folder

Indexing: a cold `index` of the whole folder into an empty database (rclip: its own indexing code path, via
peer_rclip.sh). imgsearch's ONNX export of the model is made once beforehand, into a model cache shared by
the runs (rclip ships pre-exported ONNX files; the export is a one-time cost per model, reported apart).
Queries: a new process answering one text query on the indexed folder, alternating the two tools, median of
--repeats: new prompts (the text model loads), then one prompt repeated (imgsearch keeps prompt embeddings).
rclip's `query` mode skips its rescan (--no-indexing), so both only answer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_folder

MODEL = "ViT-B-32-256"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", type=Path, required=True, help="the shared peer harness (peer_rclip.sh)")
    ap.add_argument("--weights", type=Path, default=Path("/tmp/peer-bench/weights"))
    ap.add_argument("--folder", type=Path, help="default: COUNT 4000x3000 JPEGs made from samples/")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--query", default="a photo of a dog on the grass")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench-peer")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.folder or make_folder(args.work / "jpegs", args.count, (4000, 3000))
    images = sum(1 for p in folder.rglob("*.jpg"))
    harness = str(args.bench.resolve() / "peer_rclip.sh")
    checkpoint = args.weights / f"{MODEL}-randinit-seed0.safetensors"
    cache = args.work / "model-cache"
    home = args.work / "home"
    env = {
        **os.environ,
        "IMGSEARCH_HOME": str(home),
        "IMGSEARCH_MODEL__NAME": MODEL,
        "IMGSEARCH_MODEL__PRETRAINED": str(checkpoint),
        "IMGSEARCH_MODEL__CACHE_DIR": str(cache),
        "IMGSEARCH_SERVE__QUERY_VIA_SERVER": "false",
    }
    imgsearch = [sys.executable, "-m", "imgsearch"]

    # the one-time ONNX export, on one image, into the shared model cache
    warm = args.work / "warm"
    warm.mkdir(exist_ok=True)
    shutil.copy(next(folder.rglob("*.jpg")), warm / "one.jpg")
    shutil.rmtree(home, ignore_errors=True)
    export, _ = timed([*imgsearch, "index", str(warm)], env)
    shutil.rmtree(home)

    rclip_index, out = timed([harness, "index", str(folder), str(args.work / "rclip")])
    rclip_count = int(re.findall(r"images (\d+)", out)[-1])
    ours_index, _ = timed([*imgsearch, "index", str(folder)], env)

    # Queries, alternating the tools: a new prompt each time (the text model loads), then a repeated one (rclip
    # embeds it again; imgsearch finds its embedding in the database).
    rclip_q, ours_q, rclip_again, ours_again = [], [], [], []
    for i in range(args.repeats):
        prompt = f"{args.query} {i} {time.time_ns()}"
        rclip_q.append(timed([harness, "query", str(folder), str(args.work / "rclip"), prompt])[0])
        ours_q.append(timed([*imgsearch, "query", "-k", "10", prompt], env)[0])
    for _ in range(args.repeats):
        rclip_again.append(timed([harness, "query", str(folder), str(args.work / "rclip"), args.query])[0])
        ours_again.append(timed([*imgsearch, "query", "-k", "10", args.query], env)[0])

    import json

    from imgsearch.embed.cpu import cpu_info

    status = json.loads(timed([*imgsearch, "status", "--json"], env)[1])
    print(f"cpu: {cpu_info().describe()}")
    print(f"imgsearch runtime: {status['runtime']} {status['precision']} ({status['precision_reason']})")
    print("rclip runtime: onnxruntime fp32 (its own ONNX export), batch 8")
    print(f"folder {folder}: {images} JPEGs; model {MODEL} (random init), CPU threads {os.cpu_count()}")
    print(f"imgsearch one-time ONNX export (+ indexing one image): {export:.1f} s")
    print(f"index  rclip     {rclip_index:6.1f} s  {rclip_count / rclip_index:6.2f} images/s  ({rclip_count} images)")
    print(f"index  imgsearch {ours_index:6.1f} s  {images / ours_index:6.2f} images/s  ({images} images)")
    print(f"       imgsearch / rclip throughput: {(images / ours_index) / (rclip_count / rclip_index):.2f}x")
    for what, theirs, ours in (("new prompt", rclip_q, ours_q), ("repeated prompt", rclip_again, ours_again)):
        print(f"query, {what}:")
        print(f"  rclip     median {statistics.median(theirs):.2f} s  (all: {', '.join(f'{t:.2f}' for t in theirs)})")
        print(f"  imgsearch median {statistics.median(ours):.2f} s  (all: {', '.join(f'{t:.2f}' for t in ours)})")
        print(f"  imgsearch / rclip time: {statistics.median(ours) / statistics.median(theirs):.2f}x")


if __name__ == "__main__":
    main()
