"""Unattended batch jobs: what makes `mine run` safe to schedule every night.

Each module is one guarantee:

- ``lock``       one writer per store; a dead writer's lock is taken over.
- ``checkpoint`` the streaming state saved atomically, so a crash costs minutes, not the run.
- ``signals``    SIGINT/SIGTERM end the run at a consistent point, with a checkpoint.
- ``combine``    stores and fresh passes as "parts" whose union is one exact store
                 (used by ``--update`` and ``mine merge``).
- ``update``     skip images a store already holds, by content hash.
- ``merge``      ``mine merge A B -o C``.
- ``output``     the output folder: stale temp files, write errors explained.
- ``record``     one JSON line per job appended to a log, for cron wrappers.
- ``errors``     the failures above, each mapped to an exit code by the CLI.
- ``faults``     test-only pause points for fault-injection tests.
"""
