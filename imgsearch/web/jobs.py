"""Generation jobs of the server: one at a time, in a background thread, with progress to poll."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from imgsearch.errors import BusyError, ImgSearchError
from imgsearch.types import GenerationResult, Progress

KEEP = 20  # finished jobs remembered (their images stay reachable by job id)


@dataclass
class Job:
    """A generation in flight or finished. state: "running", "done" or "failed"."""

    id: str
    prompt: str
    steps: int = 0  # 0: generate.steps
    seed: int | None = None
    state: str = "running"
    phase: str = "starting"
    done: int = 0
    total: int | None = None
    score: float | None = None
    error: str | None = None
    result: GenerationResult | None = None
    image_id: int | None = None
    notices: list[str] = field(default_factory=list)


Generate = Callable[[Job, Callable[[Progress], None], Callable[[str], None], threading.Event], GenerationResult]


class Jobs:
    """Runs `generate(job, on_progress, on_notice, stop)` for one job at a time."""

    def __init__(self, generate: Generate, find_id: Callable[[str], int | None]):
        self._generate = generate
        self._find_id = find_id
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, prompt: str, steps: int = 0, seed: int | None = None) -> Job:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BusyError("a generation is already running; wait for it to finish")
            job = Job(secrets.token_hex(8), prompt, steps, seed)
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-KEEP]:
                del self._jobs[old]
            self._thread = threading.Thread(target=self._run, args=(job,), name="imgsearch-generate", daemon=True)
            self._thread.start()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def close(self, timeout: float = 10.0) -> None:
        """Stop a running generation (after its current step) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, job: Job) -> None:
        def on_progress(p: Progress) -> None:
            job.phase, job.done, job.total, job.score = p.phase, p.done, p.total, p.score

        try:
            result = self._generate(job, on_progress, job.notices.append, self._stop)
        except ImgSearchError as exc:
            job.state, job.error = "failed", str(exc)
            return
        except Exception as exc:  # a thread's surprise must reach the page, not vanish
            job.state, job.error = "failed", f"generation failed ({type(exc).__name__}: {exc})"
            return
        job.result, job.image_id = result, self._find_id(result.path)
        job.phase, job.state = "done", "done"
