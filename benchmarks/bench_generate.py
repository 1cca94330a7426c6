#!/usr/bin/env python3
"""Generation time with the real architectures: ViT-B-32 guiding vqgan_imagenet_f16_16384, and the Fourier fallback.

    python benchmarks/bench_generate.py                 # the CPU defaults (128 px, 60 steps, 8 cutouts)
    python benchmarks/bench_generate.py --size 256 --steps 300 --cutouts 32 --device cuda   # the GPU defaults

Random-init weights of the real shapes (a taming-format .ckpt + .yaml and an open_clip checkpoint, written
through the same loaders users go through): the images are noise, the timings are real.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_index import make_checkpoint


def make_vqgan(folder: Path) -> Path:
    import torch
    import yaml

    from imgsearch.generate import vqgan

    cfg = vqgan.VQGANConfig(256, 16384, 256, 256, 128, (1, 1, 2, 2, 4), 2, (16,))
    path = folder / "vqgan_imagenet_f16_16384-randinit.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": vqgan.VQGAN(cfg).state_dict(), "global_step": 0}, path)
    path.with_suffix(".yaml").write_text(yaml.safe_dump(cfg.to_yaml()))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--cutouts", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from imgsearch import Library, load_settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = {
            "model.name": "ViT-B-32",
            "model.pretrained": str(make_checkpoint("ViT-B-32", root / "clip.safetensors")),
            "model.device": args.device,
            "generate.vqgan_checkpoint": str(make_vqgan(root)),
            "generate.size": str(args.size),
            "generate.steps": str(args.steps),
            "generate.cutouts": str(args.cutouts),
        }
        with Library(load_settings(root / "home", overrides=overrides, environ={})) as lib:
            _ = lib.embedder
            for generator in ("vqgan", "fourier"):
                started = time.perf_counter()
                r = lib.generate("old teacher at blackboard", seed=0, generator=generator)
                total = time.perf_counter() - started
                print(
                    f"{generator:<8} {r.width}x{r.height}, {r.steps} steps on {args.device}: {total:6.1f} s total "
                    f"({r.seconds / r.steps:.2f} s/step, {total - r.seconds:.1f} s loading)"
                )


if __name__ == "__main__":
    main()
