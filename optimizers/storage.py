"""Where a study lives: an RDB URL (SQLite by default; heartbeats retry a killed worker's trial) or a journal file."""

import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend


def open_journal(path: str) -> JournalStorage:
    """Optuna's journal file at ``path``, shared by workers on one filesystem."""
    # One append-only file, no database server: optuna's journal, for workers that share a filesystem. It has
    # no heartbeats, so a killed worker's trial stays RUNNING and is not retried (an RDB URL retries it).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return JournalStorage(JournalFileBackend(str(Path(path).expanduser())))


def open_storage(url: str) -> RDBStorage | JournalStorage:
    """``journal:PATH`` (or a path ending in ``.log``): a journal file; anything else: an RDB URL (sqlite://...)."""
    if url.startswith("journal:") or url.endswith(".log"):
        return open_journal(url.removeprefix("journal:"))
    # Heartbeats mark the trial of a killed process as failed once its grace period passes, and the retry
    # callback queues its parameters again, so a crash costs one trial's progress at most. (Optuna calls both
    # "experimental" since v2.8; they are its documented way to survive killed workers.)
    from sqlalchemy.exc import IntegrityError, OperationalError

    def connect() -> RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {},
                heartbeat_interval=10,
                grace_period=30,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )

    for attempt in range(4):
        try:
            return connect()
        except (IntegrityError, OperationalError):
            # Workers started together race to create the schema of a new database; the loser finds it made.
            time.sleep(0.2 * (attempt + 1))
    return connect()
