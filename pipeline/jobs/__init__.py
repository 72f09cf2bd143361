"""Unattended batch jobs: what makes `mine run` safe to schedule every night.

Each module is one guarantee:

- ``checkpoint`` the streaming state saved atomically, so a crash costs minutes, not the run.
- ``combine``    stores and fresh passes as "parts" whose union is one exact store
                 (used by ``--update`` and ``mine merge``).
- ``update``     skip images a store already holds, by content hash.
- ``merge``      ``mine merge A B -o C``.
- ``output``     the output folder: stale temp files, write errors explained.
- ``strategy``   one process (``Solo``) or a torchrun rank (``distributed.Dist``): one run path for both.
- ``record``     one JSON line per job appended to a log, for cron wrappers.

Below every stage, beside ``durable.py``, because render and embed need them too:
``pipeline.lock`` (one writer per store; a dead writer's lock is taken over), ``pipeline.signals``
(SIGINT/SIGTERM end a job at a consistent point), ``pipeline.job_errors`` (the job failures, each
mapped to an exit code by the CLI) and ``pipeline.faults`` (test-only pause points).
"""
