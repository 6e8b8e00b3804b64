//! Colony's std transport: the server, the worker, the `Loop` and `Executor` APIs, on tokio.
