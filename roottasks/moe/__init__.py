"""Moe, the root task: memory allocator, log, rom namespace, and the loader of the image.

Moe is a task like any other: it holds the kernel factory, its pager gate to
Sigma0, the kernel log and the debugger, and everything it does for other
tasks it does through IPC. ``main`` loads the image (``loader``) and then
serves its objects (``server``) until the image's ``run.until`` tasks are done.
"""
from roottasks.moe.server import main

__all__ = ["main"]
