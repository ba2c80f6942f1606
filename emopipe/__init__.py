"""emopipe: real-time facial emotion recognition as small processes on a ZeroMQ bus."""

__version__ = "0.1.0"
