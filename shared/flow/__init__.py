"""Flow control shared by every worker: concurrency slots and rate buckets in Redis.

``limits.py`` parses what ``@task(concurrency=..., rate_limit=...)`` declares;
``slots.py`` and ``buckets.py`` keep the counts every worker process shares (one
Lua script per decision, so two workers never both take the last slot or token).
The worker's gate is ``services/worker/middleware/flow.py``.
"""
