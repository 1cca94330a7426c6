"""OpenVINO on the CPU: the default runtime, in every install, with bf16 where the CPU has it.

OpenVINO reads the ONNX files as they are and compiles each tower for this CPU at the precision asked
(`INFERENCE_PRECISION_HINT`: bf16 runs on AMX or AVX512_BF16 units; f32 elsewhere). Compiled towers are kept
under `model_cache_dir/openvino/` (OpenVINO's own model cache, keyed by the file, the precision and the CPU),
so a new process opens the text tower in about 0.2 s instead of compiling it again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.embed.cpu import usable_cores
from imgsearch.embed.towers import Run, TowerEmbedder, fitted

if TYPE_CHECKING:
    from collections.abc import Callable

    from imgsearch.embed.folder import ModelFolder

HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoEmbedder(TowerEmbedder):
    runtime = "openvino"

    def __init__(
        self,
        folder: ModelFolder,
        precision: str,
        repair: Callable[[], None] | None = None,
        cache_dir: Path | None = None,
    ):
        super().__init__(folder, precision, repair)
        self.cache_dir = cache_dir

    def open(self, path: Path, tower: str) -> Run:
        compiled = _core(self.cache_dir).compile_model(str(path), "CPU", _config(self.precision))
        port = compiled.inputs[0]
        shape = port.get_partial_shape()
        batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None
        request = compiled.create_infer_request()
        lock = threading.Lock()  # one infer request per tower; OpenVINO's requests are not thread-safe

        def run(x: np.ndarray) -> np.ndarray:
            with lock:
                return np.array(request.infer({0: x})[0], copy=True)

        return fitted(run, port.get_element_type().to_dtype(), batch)


_CORES: dict[str, Any] = {}
_CORES_LOCK = threading.Lock()


def _core(cache_dir: Path | None) -> Any:
    """One OpenVINO Core per compiled-model cache folder, made on first use (the import costs ~0.15 s)."""
    import openvino as ov

    key = str(cache_dir or "")
    with _CORES_LOCK:
        if key not in _CORES:
            core = ov.Core()
            if cache_dir is not None:
                try:
                    cache_dir.mkdir(parents=True, exist_ok=True)
                    core.set_property({"CACHE_DIR": str(cache_dir)})
                except OSError:
                    pass  # no cache: each process compiles the towers again, slower to start, same results
            _CORES[key] = core
        return _CORES[key]


def _config(precision: str) -> dict[str, Any]:
    return {
        "INFERENCE_PRECISION_HINT": HINTS[precision],
        "INFERENCE_NUM_THREADS": threads(),
        "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: the model takes whole batches
    }


def threads() -> int:
    """Every CPU this process may use. OMP_NUM_THREADS caps it, as it caps PyTorch and ONNX Runtime: Ray sets it to
    an actor's CPUs, so that several embedding actors on one machine do not each run a thread per core."""
    usable = usable_cores()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return int(cap) if cap.isdigit() and 0 < int(cap) < usable else usable
