"""Running ``ade-collect`` / ``ade-judge`` on a Ray cluster (``--ray``; docs/scaling.md).

``options`` (the command-line words, no Ray import), ``claims`` (exactly-once record writing, no Ray
import) and ``ray_collect`` (the Ray job; imports Ray lazily). The runtime core never needs Ray.
"""
