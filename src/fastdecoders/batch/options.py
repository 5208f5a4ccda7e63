"""How a batch job runs, shared by decode and encode jobs: the engine, the Ray cluster, resume and progress."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("embedded", "ray")


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Fields every job has (keyword-only, so each job lists its own fields first)."""

    #: manifest file; None: OUT/manifest.jsonl.
    manifest: str | None = None
    #: skip items done and verified; None: on when the manifest exists.
    resume: bool | None = None
    progress: bool = True
    engine: str = "embedded"
    #: Ray cluster address; None: a local Ray started (and stopped) by the job.
    address: str | None = None
    #: Ray: decoder/encoder actors and the resources of each.
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    #: local Ray only: CPUs and object store size of the cluster the job starts.
    num_cpus: int | None = None
    object_store_mb: int = 300
    #: fault injection for tests: a marker file; the first Ray actor to start its second batch while the file is
    #: missing creates it and dies (its batch must be retried).
    fault_exit_once: str | None = None
