#!/usr/bin/env python3
"""Auto-tagging cost beyond embedding the images: N indexed images against an L-label vocabulary.

    python benchmarks/bench_tag.py                    # 10,000 images x 500 labels, random-init ViT-B-32
    python benchmarks/bench_tag.py --images 100000 --labels 1000

Steps timed, each through the product's own code (Library.tag):
  1. first pass: embed every label prompt (labels x templates, through the text tower; cached after),
     then score every image (one matrix product per chunk of 4,096), apply the rule, write the tags;
  2. the same pass again with all prompts cached (what a vocabulary change costs);
  3. a pass with nothing new (the incremental no-op that `index`/`watch` pay with tagging.auto on);
  4. one new label added (its prompts embedded, every image re-scored, only differences written).
Image vectors are random unit vectors stored as `index` would store them: their values do not change the
cost. The rule is opened up (min_probability 0, max_margin 100) so each image gets top_k tags, the most
rows the writer can be asked for.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_checkpoint


def vocabulary(count: int) -> str:
    from imgsearch.search.labels import load_vocabulary

    names = [label.name for label in load_vocabulary("")[0]]
    extra = (f"{adjective} {name}" for adjective in ("old", "small", "red", "wet", "night") for name in names)
    return "\n".join((names + list(extra))[:count]) + "\n"


def fill(lib, count: int) -> None:  # type: ignore[no-untyped-def]
    from imgsearch.embed import configured_model_id
    from imgsearch.store.repository import NewImage

    rng = np.random.default_rng(0)
    store, dim = lib.store, 512
    with store.write() as conn:
        store.claim_model(conn, configured_model_id(lib.settings), dim)
        for i in range(count):
            v = rng.standard_normal(dim).astype(np.float32)
            store.insert_image(conn, NewImage(f"/photos/{i:07d}.jpg", 1, 1, f"{i:032x}", 1, 1, v / np.linalg.norm(v)))


def timed(label: str, run):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - started
    print(
        f"{label:<42} {seconds:8.2f} s   images {report.images:>7}  prompts embedded {report.prompts_embedded:>5}  "
        f"tags +{report.added} -{report.removed}"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=500)
    parser.add_argument("--model", default="ViT-B-32")
    args = parser.parse_args()

    from imgsearch import Library, load_settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = make_checkpoint(args.model, root / "model.safetensors")
        vocab = root / "vocab.txt"
        vocab.write_text(vocabulary(args.labels))
        overrides = {
            "model.name": args.model,
            "model.pretrained": str(checkpoint),
            "model.device": "cpu",
            "tagging.vocabulary": str(vocab),
            "tagging.min_probability": "0",
            "tagging.max_margin": "100",
        }
        with Library(load_settings(root / "home", overrides=overrides, environ={})) as lib:
            fill(lib, args.images)
            templates = len(lib.settings.tagging.templates)
            print(f"{args.images} images x {args.labels} labels x {templates} templates, {args.model} on CPU")
            started = time.perf_counter()
            _ = lib.embedder
            print(f"{'(model load, not counted below)':<42} {time.perf_counter() - started:8.2f} s")
            timed("1. first pass (prompts embedded + tagging)", lib.tag)
            with lib.store.write() as conn:
                from imgsearch.store import tags as sql

                sql.forget_tagging(conn)
            timed("2. same pass, prompts cached", lib.tag)
            timed("3. nothing new (incremental no-op)", lib.tag)
            vocab.write_text(vocab.read_text() + "a brand new label\n")
            timed("4. one label added", lib.tag)


if __name__ == "__main__":
    main()
