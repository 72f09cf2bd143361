"""Exit codes of the `mine` command, stable for cron wrappers (docs/operations.md lists them)."""

OK = 0
BAD_ARGS = 2  # unknown option/layer/model/feature, invalid value
MISSING_INPUT = 3  # images, dataset root or weights not found
LOCKED = 4  # another job holds the store's lock
INTERRUPTED = 5  # SIGINT/SIGTERM; a checkpoint was written, re-run to resume
STORE_ERROR = 6  # store corrupt/incomplete/unwritable, out of disk space
FAILED = 7  # a computation check failed (e.g. finalize could not reproduce a value)
