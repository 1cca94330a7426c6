#!/usr/bin/env python3
"""`index --ray` against the plain pipeline on one machine: the same camera-sized JPEGs, the same model, indexed
(a) by the plain pipeline, (b) through a local Ray cluster of 1 node process, (c) of 2 node processes.

    sudo python benchmarks/bench_ray.py                     # random-init ViT-B-32, 96 and 192 12-MP JPEGs
    sudo python benchmarks/bench_ray.py --count 200 --nodes 1 2 4

Each variant indexes COUNT and 2 x COUNT images, the fastest of --repeat runs of each (the machine may be
shared), each run a fresh process and a fresh home, model loading included (the plain pipeline loads the
model once, a Ray run once per actor). The difference of the two sizes is the steady rate (COUNT images /
extra seconds), and what the first size took beyond COUNT images at that rate is the fixed cost (scan,
connecting, starting actors, loading models). The machine's cores are split between the nodes (`--num-cpus`),
one embedding actor per node, so every variant has the same CPUs. The Ray nodes run in a loopback-only
network namespace (tests/raycluster.py): needs root, sends nothing beyond the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_index import make_checkpoint, make_folder  # noqa: E402


def driver(args: argparse.Namespace) -> None:
    """One index run in this process; prints its figures as JSON."""
    from imgsearch import Library, load_settings

    settings = load_settings(args.home, overrides=json.loads(args.overrides), environ={})
    started = time.perf_counter()
    with Library(settings) as lib:
        report = lib.index([args.folder])
    print(json.dumps({"images": report.embedded, "seconds": time.perf_counter() - started}))


def variant(
    command: list[str], folders: tuple[Path, Path], overrides: dict[str, str], repeat: int, cluster: Any = None
) -> dict[str, float]:
    """Whole-run rate of the small folder, steady rate and fixed cost from the two (the fastest of `repeat` runs
    of each: the machine may be shared), and peak memory: the driver's, and the cluster's node processes' summed."""
    peaks = {"driver": 0.0, "cluster": 0.0}
    runs = [[run_driver(command, f, overrides, cluster, peaks) for _ in range(repeat)] for f in folders]
    (n1, t1), (n2, t2) = (min(r) for r in runs)
    steady = (n2 - n1) / (t2 - t1)
    return {"images": n1, "whole": n1 / t1, "steady": steady, "fixed": t1 - n1 / steady} | peaks


def run_driver(
    command: list[str], folder: Path, overrides: dict[str, str], cluster: Any, peaks: dict[str, float]
) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as home:
        args = ["--driver", "--home", home, "--folder", str(folder), "--overrides", json.dumps(overrides)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")} | {"RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen(
            [*command, sys.executable, __file__, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while proc.poll() is None:  # memory sampled four times a second while it runs
            peaks["driver"] = max(peaks["driver"], _rss([proc.pid, *_children(proc.pid)]))
            if cluster is not None:
                peaks["cluster"] = max(peaks["cluster"], _rss([p for node in cluster.nodes for p in node.pids()]))
            time.sleep(0.25)
        out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"the index run failed:\n{err[-3000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    return int(figures["images"]), float(figures["seconds"])


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found + [c for f in found for c in _children(f)]


def _rss(pids: list[int]) -> float:
    """Resident bytes of these processes, summed (shared pages counted in each: an upper bound)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return float(total)


def on_cluster(nodes: int, folders: tuple[Path, Path], overrides: dict[str, str], repeat: int) -> dict[str, float]:
    from tests.raycluster import Cluster

    cpus = max(1, (os.cpu_count() or 2) // nodes)
    with Cluster() as cluster:
        for _ in range(nodes):
            cluster.add_node(cpus)
        ray = {"index.ray": cluster.address, "index.ray_cpus_per_actor": str(cpus)}
        return variant(cluster.command(), folders, overrides | ray, repeat, cluster)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--checkpoint", type=Path, help="default: a random-init checkpoint made in the work folder")
    ap.add_argument("--count", type=int, default=96)
    ap.add_argument("--size", default="4000x3000", help="pixel size of the generated JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="Ray node processes, one cluster each")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each size and variant; the fastest counts")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgsearch-bench")
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        return driver(args)

    from imgsearch import load_settings
    from imgsearch.embed import load_embedder

    args.work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    large = make_folder(args.work / f"unique-jpegs-{args.size}-{2 * args.count}", 2 * args.count, (width, height))
    small = args.work / f"unique-jpegs-{args.size}-{2 * args.count}-first-{args.count}"
    small.mkdir(exist_ok=True)
    for photo in sorted(large.iterdir())[: args.count]:  # the same files (hard links): no second encoding
        if not (small / photo.name).exists():
            os.link(photo, small / photo.name)
    folders = (small, large)
    checkpoint = args.checkpoint or make_checkpoint(args.model, args.work / f"{args.model}-randinit.safetensors")
    overrides = {
        "model.name": args.model,
        "model.pretrained": str(checkpoint),
        "model.cache_dir": str(args.work / "models"),  # one ONNX export, made here, shared by every run
        "index.batch_size": str(args.batch),
    }
    with tempfile.TemporaryDirectory() as home:
        load_embedder(load_settings(home, overrides=overrides, environ={}))

    results = {"plain pipeline": variant([], folders, overrides, args.repeat)}
    for nodes in args.nodes:
        name = f"--ray, {nodes} node process{'es' if nodes > 1 else ''}"
        results[name] = on_cluster(nodes, folders, overrides, args.repeat)

    plain = results["plain pipeline"]
    print(f"model {args.model}  batch {args.batch}  cores {os.cpu_count()}  images {args.count} and {2 * args.count}")
    print(f"{'':28} {'whole run':>12} {'steady':>12} {'ratio':>6} {'fixed cost':>11} {'peak RSS driver / cluster':>26}")
    for name, r in results.items():
        ratio = r["steady"] / plain["steady"]
        memory = f"{r['driver'] / 2**20:8.0f} MB / {r['cluster'] / 2**20:6.0f} MB" if r["cluster"] else ""
        memory = memory or f"{r['driver'] / 2**20:8.0f} MB"
        print(f"{name:28} {r['whole']:7.2f} im/s {r['steady']:7.2f} im/s {ratio:6.2f} {r['fixed']:9.1f} s {memory:>26}")


if __name__ == "__main__":
    main()
