"""Which precision the model runs at on this machine, and why (`model.precision`).

`auto` on the CPU is bf16 where the CPU does bf16 natively (AMX, AVX512_BF16; see embed/cpu.py) and fp32
elsewhere. bf16 is kept only if it gives the same embeddings: on first use of a model on a CPU, a probe batch
of pictures and texts is embedded at fp32 and at bf16, and bf16 stays only when every cosine is at least
LOWER_PARITY; otherwise fp32. The outcome is recorded in `model_cache_dir/precision.json`, keyed by runtime,
model and CPU, so the probe runs once, and `status` shows it without loading anything. A library moved to
another machine probes again there. Either precision stores vectors under the same model id: they are the
same embeddings to 1e-3, so nothing is re-indexed when the precision changes.

`fp32`, `bf16`, `int8` (ONNX Runtime only) and `fp16` (CUDA only) force one, without a probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.embed.cpu import cpu_info
from imgsearch.errors import ConfigError

if TYPE_CHECKING:
    from imgsearch.config import Settings

LOWER_PARITY = 0.999
RECORD = "precision.json"


@dataclass(frozen=True)
class Decision:
    precision: str
    reason: str
    min_cosine: float | None = None


def decide(settings: Settings, runtime: str, model_id: str, probe: Callable[[], float]) -> Decision:
    """The precision for `runtime` (openvino, onnxruntime, pytorch-cpu, pytorch-cuda) here; probe() gives the
    least fp32-to-bf16 cosine, and is called at most once per runtime, model and CPU."""
    found = planned(settings, runtime, model_id)
    if found is not None:
        return found
    worst = probe()
    flags = ", ".join(cpu_info().bf16_flags)
    if worst >= LOWER_PARITY:
        decision = Decision("bf16", f"the CPU has {flags}; bf16 probe: least cosine to fp32 {worst:.5f}", worst)
    else:
        decision = Decision("fp32", f"bf16 probe: least cosine to fp32 {worst:.5f} < {LOWER_PARITY}", worst)
    _record(settings, _key(runtime, model_id), decision)
    return decision


def planned(settings: Settings, runtime: str, model_id: str) -> Decision | None:
    """The precision known without running the model: forced, ruled by the hardware, or probed before; None when
    the probe is still to run."""
    setting = settings.model.precision
    if setting != "auto":
        check_forced(setting, runtime)
        return Decision(setting, "set by model.precision")
    if runtime == "pytorch-cuda":
        return Decision("fp16", "autocast on CUDA")
    if runtime == "onnxruntime":
        return Decision("fp32", "onnxruntime computes in fp32 on the CPU (model.precision: int8 is the faster opt-in)")
    if not cpu_info().bf16:
        return Decision("fp32", "this CPU has neither AMX nor AVX512_BF16, so bf16 would be slower")
    return recorded(settings, runtime, model_id)


def check_forced(setting: str, runtime: str) -> None:
    """A precision named in the settings must be one the runtime and this machine have."""
    if setting == "bf16" and runtime in ("openvino", "pytorch-cpu") and not cpu_info().bf16:
        raise ConfigError("model.precision: bf16 needs a CPU with AMX or AVX512_BF16 (this one has neither); use auto")
    if setting == "bf16" and runtime == "onnxruntime":
        raise ConfigError("model.precision: bf16 runs on OpenVINO or PyTorch; use model.backend=auto or openvino")
    if setting == "int8" and runtime != "onnxruntime":
        raise ConfigError("model.precision: int8 runs on ONNX Runtime on the CPU; use model.backend=auto or onnx")
    if setting == "fp16" and runtime != "pytorch-cuda":
        raise ConfigError("model.precision: fp16 needs model.backend=open_clip on a CUDA device")


def recorded(settings: Settings, runtime: str, model_id: str) -> Decision | None:
    """What the probe decided for this runtime, model and CPU, if it ran."""
    entry = _read(settings).get(_key(runtime, model_id))
    if not isinstance(entry, dict):
        return None
    try:
        return Decision(str(entry["precision"]), str(entry["reason"]), entry.get("min_cosine"))
    except KeyError:
        return None


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def _key(runtime: str, model_id: str) -> str:
    return f"{runtime}|{model_id}|{cpu_info().signature}"


def _read(settings: Settings) -> dict[str, Any]:
    try:
        data = json.loads((settings.model_cache_dir / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(settings: Settings, key: str, decision: Decision) -> None:
    """Add the decision to the record (temp file + rename); a cache that cannot be written only means probing again."""
    path = settings.model_cache_dir / RECORD
    data = _read(settings)
    data[key] = {**asdict(decision), "cpu": cpu_info().describe(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    staging = path.with_name(f".{RECORD}.{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.write_text(json.dumps(data, indent=1), encoding="utf-8")
        staging.rename(path)
    except OSError:
        with contextlib.suppress(OSError):
            staging.unlink()
