#!/usr/bin/env python3
"""kill -9 of `python -m imgsearch index FOLDER` (a real process, the tiny test model), then a restart.

    python benchmarks/fault_kill.py                 # 20 random moments, 10 on the save's temp file, 5 set points
    python benchmarks/fault_kill.py --random 50 --images 400 --seed 3

Random moments are uniform over the indexing part of an uninterrupted run (from its first commit, less
10%, to its end), measured first; "temp file appears" kills from outside when inotify reports the save's
temp file; set points are kills from inside (a test hook, tests/crashkit.py): a batch embedded but not yet
committed, and four points of the index save.

Each trial starts from a fresh home. Odd random trials (and the others' odd trials) first index a third
of the folder completely (so a FAISS file exists), then delete 10 of those files and add the rest, and
kill that run. After the kill: `PRAGMA integrity_check`, no duplicate path, a FAISS file that passes the
product's checks holds exactly SQLite's ids, and sync.load gives SQLite's ids. After the restart
(`index --json`, run to the end): the same, plus the file is current (no rebuild), index == disk, no temp
file left, the restart embedded exactly the files that were not committed, and no committed row was
re-embedded or rewritten.

"lost" is what the killed run embedded but did not commit (the restart embeds those again): at most one
batch (index.batch_size) by design.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import crashkit, tinyclip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--random", type=int, default=20, help="kills at random moments")
    ap.add_argument("--on-temp", type=int, default=10, help="kills when the save's temp file appears (inotify)")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path(".pytest_cache/d/tinyclip"), help="the tiny model's cache")
    args = ap.parse_args()

    tiny = tinyclip.load_or_train(args.cache.resolve())
    env = crashkit.model_env(tiny) | {"IMGSEARCH_INDEX__BATCH_SIZE": str(args.batch_size)}
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="imgsearch-kill-"))
    try:
        return run(work, env, args, rng)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, env: dict[str, str], args: argparse.Namespace, rng: random.Random) -> int:
    hook = crashkit.install_hook(work / "hook")
    pictures = work / "pictures"
    crashkit.make_pictures(pictures, args.images, seed=args.seed)
    windows = [calibrate(*fresh(work, pictures, f"calibration-{pre}", pre, env), env) for pre in (False, True)]
    for (first, end), what in zip(windows, ("a fresh home", "after a full index"), strict=True):
        print(
            f"{args.images} images, batch {args.batch_size}, {what}: an uninterrupted run commits its first "
            f"batch at {first:.1f} s and ends at {end:.1f} s (start-up included)"
        )

    trials: list[tuple[str, crashkit.Trial]] = []
    for i in range(args.random):
        folder, home = fresh(work, pictures, i, pre_index=i % 2 == 1, env=env)
        first, end = windows[i % 2]
        t = crashkit.trial(folder, home, env, hook, crashkit.kill_after(rng.uniform(0.9 * first, end)), scratch=work)
        trials.append(("random" + (" (after a full index)" if i % 2 else ""), t))
        show(len(trials), trials[-1])
    for i in range(args.on_temp):
        folder, home = fresh(work, pictures, 100 + i, pre_index=i % 2 == 1, env=env)
        t = crashkit.trial(folder, home, env, hook, crashkit.kill_when_created("vectors.faiss."), scratch=work)
        trials.append(("temp file appears", t))
        show(len(trials), trials[-1])
    for i, point in enumerate(("batch-embedded", *crashkit.SAVE_POINTS)):
        folder, home = fresh(work, pictures, 200 + i, pre_index=True, env=env)
        t = crashkit.trial(folder, home, env, hook, crashkit.kill_after(0), kill_at=point, scratch=work)
        trials.append(("set point", t))
        show(len(trials), trials[-1])
    return summary(trials, args.batch_size)


def calibrate(pictures: Path, home: Path, env: dict[str, str]) -> tuple[float, float]:
    """When an uninterrupted run commits its first batch, and when it ends (seconds from its start)."""
    home.mkdir(parents=True, exist_ok=True)
    before = crashkit.count_rows(home / "imgsearch.db")
    started = time.monotonic()
    proc = crashkit.start_index(pictures, crashkit.child_env(env, home))
    while crashkit.count_rows(home / "imgsearch.db") == before and proc.poll() is None:
        time.sleep(0.01)
    first = time.monotonic() - started
    proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"the calibration run failed (exit {proc.returncode})")
    return first, time.monotonic() - started


def fresh(work: Path, pictures: Path, n: int | str, pre_index: bool, env: dict[str, str]) -> tuple[Path, Path]:
    """A copy of the pictures and an empty home; with pre_index, a third of them indexed, 10 of those then deleted."""
    folder, home = work / f"t{n}" / "pictures", work / f"t{n}" / "home"
    files = sorted(pictures.iterdir())
    folder.mkdir(parents=True)
    first = files[: len(files) // 3] if pre_index else files
    for f in first:
        shutil.copy2(f, folder / f.name)
    if pre_index:
        crashkit.run_index(folder, crashkit.child_env(env, home))
        for f in sorted(folder.iterdir())[:10]:
            f.unlink()
        for f in files[len(files) // 3 :]:
            shutil.copy2(f, folder / f.name)
    return folder, home


def show(n: int, item: tuple[str, crashkit.Trial]) -> None:
    kind, t = item
    print(
        f"{n:3d} {kind:34s} {t.how:18s} rows {t.rows_before:3d} -> {t.rows_at_kill:3d}  "
        f"file {t.file_state_at_kill:10s} temp {t.temp_files_at_kill}  lost {t.lost}  "
        f"uncommitted {t.uncommitted:3d}  restart embedded {t.restart_embedded:3d}  "
        + ("OK" if not t.problems else "FAIL: " + "; ".join(t.problems)),
        flush=True,
    )


def summary(trials: list[tuple[str, crashkit.Trial]], batch_size: int) -> int:
    killed = [t for _, t in trials if t.how != "finished first"]
    failed = [t for _, t in trials if t.problems]
    states: dict[str, int] = {}
    for t in killed:
        states[t.file_state_at_kill] = states.get(t.file_state_at_kill, 0) + 1
    print()
    print(f"trials: {len(trials)}, killed mid-run: {len(killed)}, with problems: {len(failed)}")
    print(f"FAISS file right after the kill: {states}")
    print(f"temp files left right after the kill: {sum(t.temp_files_at_kill > 0 for t in killed)} trials")
    lost = max((t.lost for _, t in trials), default=0)
    exact = sum(t.restart_embedded == t.uncommitted for _, t in trials)
    redone = sum("re-embedded" in p for _, t in trials for p in t.problems)
    print(f"max lost (embedded by the killed run, not committed, so embedded again): {lost} (batch {batch_size})")
    print(f"restart embedded exactly the files not committed: {exact}/{len(trials)}")
    print(f"committed rows re-embedded or rewritten by a restart: {redone}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
