"""The work-pool protocol: how capture hands work to the pools of detect and classify workers.

Read this first; ``broker.py`` is capture's side of it, ``worker.py`` the workers'. Which
stages are pools, their links and policies: ``emopipe/topology.py``. It is the ZeroMQ guide's
load-balancing broker with Paranoid Pirate heartbeats, told in Majordomo's manner.

Sockets
    The broker (capture's hub) binds one ROUTER socket per pool, at the pool's link endpoint
    (``[endpoints]``). A worker connects one DEALER socket to each address of that endpoint (a
    comma-separated list: several capture processes), and works for each.

Commands: every message on a pool's socket is ``[command, *body]`` (the ROUTER adds the
worker's identity in front). Worker to broker:

    JOIN       pool, prefix, ...     joins the pool named ``pool`` ([a-z]{1,16}) for the units
                                     whose topic starts with a prefix: the kind (``frame.``, every
                                     camera) or the kind and a camera (``frame.cam0.``). Sent at
                                     start and again when the broker asks (REJOIN). A worker that
                                     can map shared memory ends it with ``shm:HOST``
                                     (``emopipe.shm.host_id``): if HOST is the broker's, its
                                     frames come in the broker's shared memory (codec "shm").
    HEARTBEAT                        every HEARTBEAT_S, whatever the worker is doing (its handlers
                                     run on other threads).
    ANSWER     topic, header, payload   the answer to one unit: an ``emopipe.messages`` message of
                                     the kind the pool answers with, same camera and seq.
    LEAVE                            the worker stops: its units go to the others at once.

Broker to worker:

    READY      pool                  the JOIN was accepted.
    WORK       topic, header, payload   one unit: one message of one camera.
    REJOIN                           the broker does not know this worker (it restarted, or forgot
                                     the worker after FORGET_AFTER_S of silence): JOIN again.

Anything else, a JOIN with a bad pool name, prefix or count, and a worker over MAX_WORKERS is
refused, counted (``emopipe_subscriptions_refused_total``) and logged at most once every
REFUSED_LOG_EVERY_S. A worker is alive while the broker heard from it (any command) within
LIVENESS_S.

Assignment (the pool's policy, ``topology.Stage.policy``)
    sticky      each camera is assigned to one live worker and stays there (detect: its tracks
                live there); cameras are spread evenly, and one moves to a worker that joins while
                another holds two or more than it. The worker that gets a camera starts afresh.
    least_busy  each unit goes to the live worker with the least work in flight (ties: the one
                idle longest); cameras take turns.

Windows: units in flight at most, per camera (sticky) or per worker (least busy):
``Stage.live_window`` live, LOSSLESS_WINDOW lossless. What waits is kept in order, each camera's
own queue.

Giving up, and how lossless and live differ
    * A worker that is not alive, or that a send finds gone (EHOSTUNREACH), or that LEAVEs, has
      left: its units go back to the front of their queues, for the others. An answer that still
      comes from it counts if the unit is still open.
    * live: a camera keeps only its newest waiting unit (the older is given up: ``stale``); a
      unit unanswered after LIVE_TIMEOUT_S is given up (``lost``); a worker whose queue is full
      does not get more; a worker's answer that finds the broker's queue full is dropped.
    * lossless: nothing is given up for time. A unit unanswered after LOSSLESS_TIMEOUT_S by a
      live worker is handed to another; answers wait for room (back-pressure).
    * either: a unit whose tries went wrong MAX_ATTEMPTS times (workers that left with it, each
      once; answers of the wrong kind; lossless time-outs) is given up (``failed``).

    The broker reports what it gave up; the hub skips those frames when their turn comes (their
    line is missing: a lossless run ends incomplete, exit status 3).
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- commands

JOIN = b"JOIN"
HEARTBEAT = b"HEARTBEAT"
ANSWER = b"ANSWER"
LEAVE = b"LEAVE"
READY = b"READY"
WORK = b"WORK"
REJOIN = b"REJOIN"
#: a pool's name in JOIN and READY
POOL_NAME = re.compile(rb"[a-z]{1,16}")
#: a JOIN item that is not a prefix: the worker's shared memory (``emopipe.shm.host_id``), at most
#: MAX_SHARED bytes
SHARED = b"shm:"
MAX_SHARED = 200

# ---------------------------------------------------------------- timing

#: a worker sends HEARTBEAT this often
HEARTBEAT_S = 0.25
#: a worker not heard from for this long has left (its units go to the others)
LIVENESS_S = 1.0
#: a worker not heard from for this long is forgotten (if it comes back, it is asked to REJOIN)
FORGET_AFTER_S = 10.0
#: with MAX_WORKERS workers, one silent for this long makes room for a new one
STALE_WORKER_S = 5.0
#: how often the broker looks for workers that left and for units given up
CHECK_EVERY_S = 0.05
#: live: a unit unanswered this long is given up (``lost``); later units of its camera wait meanwhile
LIVE_TIMEOUT_S = 1.0
#: lossless: a unit a live worker has not answered in this long is handed to another worker
LOSSLESS_TIMEOUT_S = 60.0
#: a unit whose tries went wrong this often is given up (``failed``)
MAX_ATTEMPTS = 3
#: refused commands: one log line per kind at most this often (each is counted)
REFUSED_LOG_EVERY_S = 10.0

# ---------------------------------------------------------------- windows and bounds

#: lossless: units in flight per camera (sticky) or per worker (least busy)
LOSSLESS_WINDOW = 8
#: lossless: a camera's frames between capture's reader and the sink, at most (the reader waits
#: meanwhile): the bound on the frames capture holds for the sink
LOSSLESS_OPEN = 4 * LOSSLESS_WINDOW
#: a worker's socket queues, each way (its work is bounded by the window)
WORKER_HWM = 64
#: lossless: units waiting in a worker's lanes, at most, before it reads more (back-pressure)
WORKER_WAITING = 8
#: answers read from workers and not yet taken by the hub, at most (more are refused)
MAX_ANSWERS = 10_000
#: a message a broker accepts from a worker, at most (a frame's face crops: 2,304 bytes a face at
#: 48x48, so 4 MB is over 1,700 faces); libzmq refuses a bigger one before it is read
MAX_ANSWER_BYTES = 4 << 20
#: workers of one pool, and prefixes of one worker, at most
MAX_WORKERS = 128
MAX_PREFIXES = 512
#: messages read per call, so a flood cannot hold up the hub
READ_PER_PUMP = 10_000
