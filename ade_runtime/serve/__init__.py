"""``ade-serve``: ADE's adaptive loop behind a LitServe model server (docs/serving.md).

Nothing here is imported by ``import ade_runtime``: the server's libraries (litserve, FastAPI,
uvicorn, prometheus-client, the ``serve`` extra) load only when ``ade_runtime.serve.api`` or
``ade_runtime.serve.server`` is imported. ``inputs`` (request validation and the ``--max-*``
limits), ``exports`` (export fingerprints and hot swap) and ``shared`` (state shared by the
server's processes, and children that die with it) need only the runtime core; ``gate`` (the ASGI
middleware in front of the app: auth, shedding, bounded bodies, disconnects) needs anyio.
"""
