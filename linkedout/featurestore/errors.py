"""Errors of the Feast repository; each message names the repository, store or field at fault."""

from __future__ import annotations


class FeatureRepoError(RuntimeError):
    """A Feast repository is missing, not applied, or holds data that does not fit its definitions."""


class OnlineStoreUnavailable(FeatureRepoError):
    """The online store (Redis ``host:port`` or the SQLite file) did not answer; the message names it.

    Raised within the configured bound (Redis: socket connect/read timeouts times the retries), so a
    caller never hangs on an outage and can serve again once the store is back.
    """


class OfflineStoreError(FeatureRepoError):
    """The offline store (a directory or ``s3://bucket/prefix``) could not be read or written."""
