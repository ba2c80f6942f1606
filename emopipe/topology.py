"""The pipeline's shape, declared once: its stages in order, and the link each takes its input on.

    capture ──frames──▶ detect ──faces──▶ classify ──results──▶ sink
      hub     (pool: sticky)    (pool: least busy)     (fan-out, in frame order)

Capture binds every link and owns each frame until its results are released
(``services/capture/hub.py``): a pool stage's workers connect to its link, take one unit of
work at a time and answer it back (the protocol: ``emopipe/workpool/protocol.py``); the
sink subscribes to the last link and gets one ordered stream per camera.

What is derived from ``STAGES`` (or checked against it by a test): capture's bound links and
the hub's pools, the workers' endpoint, message kind and CURVE key, the launcher's start order
and ``--workers`` stages, the config's ``[endpoints]`` keys and default metrics ports, the
metrics' stage labels, the bench's table, and the compose, Kubernetes and Prometheus files.

Adding a stage is a row here (between ``capture`` and ``sink``: it takes the kind the stage
before it answers) and a handler (``emopipe.workpool.worker.run``); ``check`` says what is wrong
with a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emopipe.messages import KINDS

#: pool policies: a camera stays on one worker (its state, e.g. face tracks, lives there), or
#: each unit goes to the worker with the least work in flight (a stateless stage)
STICKY = "sticky"
LEAST_BUSY = "least_busy"


@dataclass(frozen=True)
class Link:
    name: str  # its key in [endpoints] and its CURVE key pair's name
    kind: str  # the message kind capture sends on it
    endpoint: str  # the default address (``{runtime}``: emopipe.bus.runtime_dir)


@dataclass(frozen=True)
class Stage:
    name: str  # its config section, ``services.<name>``, metrics label
    takes: Link | None  # None: the source (capture binds every link)
    metrics_port: int  # the default /metrics port (a pool's further workers on a host: + 10, ...)
    answers: str = ""  # a pool: the message kind its workers answer with ("" for capture and the sink)
    policy: str = ""  # a pool: STICKY or LEAST_BUSY
    live_window: int = 0  # a pool, live: units in flight per camera (sticky) or per worker (least busy)
    tracks: bool = False  # its workers number face tracks: the hub maps them to the camera's own ids

    @property
    def pooled(self) -> bool:
        return bool(self.answers)


STAGES: tuple[Stage, ...] = (
    Stage("capture", None, 9101),
    Stage(
        "detect",
        Link("frames", "frame", "ipc://{runtime}/frames"),
        9102,
        answers="faces",
        policy=STICKY,
        live_window=1,  # the next frame waits in capture, where a newer one replaces it
        tracks=True,
    ),
    Stage(
        "classify",
        Link("faces", "faces", "ipc://{runtime}/faces"),
        9103,
        answers="results",
        policy=LEAST_BUSY,
        live_window=2,  # one running, one queued
    ),
    Stage("sink", Link("results", "results", "ipc://{runtime}/results"), 9104),
)


def names(stages: Sequence[Stage] = STAGES) -> tuple[str, ...]:
    return tuple(s.name for s in stages)


def stage(name: str, stages: Sequence[Stage] = STAGES) -> Stage:
    for found in stages:
        if found.name == name:
            return found
    raise KeyError(f"no stage {name!r} (stages: {', '.join(names(stages))})")


def link(name: str, stages: Sequence[Stage] = STAGES) -> Link:
    for found in links(stages):
        if found.name == name:
            return found
    raise KeyError(f"no link {name!r} (links: {', '.join(found.name for found in links(stages))})")


def pools(stages: Sequence[Stage] = STAGES) -> tuple[Stage, ...]:
    """The stages that run as pools of workers, in the order a frame's work goes through them."""
    return tuple(s for s in stages if s.pooled)


def links(stages: Sequence[Stage] = STAGES) -> tuple[Link, ...]:
    """Every link capture binds, in pipeline order."""
    return tuple(s.takes for s in stages if s.takes is not None)


def start_order(stages: Sequence[Stage] = STAGES) -> tuple[str, ...]:
    """Downstream first, so each stage finds the next one waiting; stopping goes the other way."""
    return tuple(reversed(names(stages)))


def check(stages: Sequence[Stage] = STAGES) -> None:
    """A table the pipeline can run: ValueError naming the first row that is wrong."""
    if len(stages) < 2 or stages[0].takes is not None or any(s.takes is None for s in stages[1:]):
        raise ValueError("the first stage, and only it, is the source (takes nothing)")
    if stages[-1].pooled:
        raise ValueError(f"the last stage {stages[-1].name!r} is the sink: it answers nothing")
    if len(set(names(stages))) != len(stages) or len({link.name for link in links(stages)}) != len(stages) - 1:
        raise ValueError(f"stage and link names must be unique: {names(stages)}")
    kind = "frame"
    for row in stages[1:]:
        assert row.takes is not None
        if row.takes.kind != kind:
            raise ValueError(f"stage {row.name!r} takes {row.takes.kind!r}, but the stage before it gives {kind!r}")
        if row.pooled:
            if row.answers not in KINDS or row.policy not in (STICKY, LEAST_BUSY) or row.live_window < 1:
                raise ValueError(f"pool {row.name!r}: a message kind, a policy and a live window of 1 or more")
            kind = row.answers
        elif row is not stages[-1]:
            raise ValueError(f"stage {row.name!r} between capture and the sink must be a pool")
    if kind != "results":
        raise ValueError(f"the sink takes results, but the last pool gives {kind!r}")
