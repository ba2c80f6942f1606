"""emopipe: real-time facial emotion recognition as small processes on a ZeroMQ bus.

In Python, without the processes: ``emopipe.analyze(source)`` (every frame of a video, a
folder of images or a camera) and ``emopipe.analyze_image(picture)`` (emopipe/api.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from emopipe.api import Face, FrameResult, SourceError, analyze, analyze_image, rows

#: emopipe/api.py imports the stages (services/), which import emopipe's shared modules: it is
#: loaded on first use, so a stage importing emopipe.messages loads neither it nor the others
__all__ = ["Face", "FrameResult", "SourceError", "__version__", "analyze", "analyze_image", "rows"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from emopipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'emopipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
