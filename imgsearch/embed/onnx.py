"""ONNX Runtime on the CPU (the `onnxruntime` extra): fp32, and int8 as an opt-in (`model.precision: int8`).

int8 is ONNX Runtime's dynamic quantisation of both towers (weights to int8 per tensor, activations quantised on
the fly), made once per model into `model_cache_dir/int8/<model>/`. It is fast on CPUs without bf16 (AVX2,
AVX512_VNNI) but changes embeddings more than bf16 does, so it is never chosen by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.embed.cpu import usable_cores
from imgsearch.embed.towers import Run, TowerEmbedder, fitted
from imgsearch.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from collections.abc import Callable

    from imgsearch.embed.folder import ModelFolder

INSTALL = "pip install 'imgsearch[onnxruntime]'"
DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OnnxEmbedder(TowerEmbedder):
    runtime = "onnxruntime"

    def __init__(
        self,
        folder: ModelFolder,
        precision: str = "fp32",
        repair: Callable[[], None] | None = None,
        int8_dir: Path | None = None,
    ):
        super().__init__(folder, precision, repair)
        self.int8_dir = int8_dir

    def open(self, path: Path, tower: str) -> Run:
        if self.precision == "int8":
            assert self.int8_dir is not None
            path = quantized(path, self.int8_dir / f"{tower}.onnx")
        session = open_session(path, spin=tower != "image")
        port = session.get_inputs()[0]
        batch = port.shape[0] if isinstance(port.shape[0], int) else None
        return fitted(lambda x: session.run(None, {port.name: x})[0], np.dtype(DTYPES[port.type]), batch)


def open_session(path: Path, spin: bool = True) -> Any:
    """An onnxruntime session on the CPU. spin: its threads busy-wait between operations (the fastest for the
    model alone); the image tower does not, because during `index` it shares the cores with the decode
    threads, which spinning threads starve (ViT-B-32, 2 cores: index 9.8 -> 11.4 images/s, while the model
    alone drops from 17.3 to 14.4)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the core never prints
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _threads() -> int:
    """Every CPU this process may use; 0 (onnxruntime's choice: one per physical core) when that is all of them.

    OMP_NUM_THREADS caps it, as it caps PyTorch: Ray sets it to an actor's CPUs, so that several embedding
    actors on one machine (`index --ray`) do not each run a thread per core (two actors on 2 cores, ViT-B-32:
    9.9 -> 16.5 images/s once both are busy).
    """
    usable = usable_cores()
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and 0 < int(cap) < usable:
        return int(cap)
    return usable if usable < (os.cpu_count() or usable) else 0


def quantized(source: Path, target: Path) -> Path:
    """The int8 copy of a tower, made once (under a temporary name, then renamed into place)."""
    if target.is_file():
        return target
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ConfigError(f"model.precision: int8 needs onnxruntime and onnx ({INSTALL}); or use auto") from None
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        logging.disable(logging.WARNING)  # the quantiser logs advice to the root logger: the core never prints
        try:
            quantize_dynamic(str(source), str(staging), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
        staging.rename(target)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise WeightsError(f"model.cache_dir: cannot write the int8 model under {target.parent} ({why})") from None
    finally:
        with contextlib.suppress(OSError):
            staging.unlink()
    return target
