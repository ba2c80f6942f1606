"""The work-pool protocol: capture's hub hands each frame's work to pools of workers.

``protocol.py`` specifies it (read it first); ``broker.py`` (with ``members.py``, the worker
table) is capture's side, ``worker.py`` the workers' loop.
"""
