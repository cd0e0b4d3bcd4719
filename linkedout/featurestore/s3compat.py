"""S3 for Feast's file offline store without s3fs.

Feast's file offline store reads its parquet sources with Dask, and Dask opens ``s3://`` paths
through fsspec, which needs the ``s3fs`` package. ``s3fs`` pins ``aiobotocore``, which pins an
older ``botocore`` than the project's ``boto3`` needs, so it is not installed. Its other S3 paths
(schema reads, offline writes) already use pyarrow's own S3 filesystem, which needs nothing more.

:func:`ensure_s3_fsspec` registers, only when ``s3fs`` is absent, an fsspec ``s3`` filesystem that
wraps ``pyarrow.fs.S3FileSystem`` and understands the ``storage_options`` Feast passes
(``client_kwargs.endpoint_url``, ``key``, ``secret``, ``token``). With ``s3fs`` installed it does
nothing and fsspec uses ``s3fs``.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlparse

_LOCK = threading.Lock()
_DONE = False


def arrow_s3_filesystem(endpoint: str | None = None, key: str | None = None, secret: str | None = None,
                        token: str | None = None) -> Any:
    """A ``pyarrow.fs.S3FileSystem``; ``endpoint`` is ``http(s)://host[:port]`` of an S3-compatible server.

    Credentials default to pyarrow's AWS chain (environment variables, profile, instance role).
    """
    import pyarrow.fs as pafs

    opts: dict[str, Any] = {}
    if endpoint:
        url = urlparse(endpoint)
        opts["endpoint_override"] = url.netloc or endpoint
        opts["scheme"] = url.scheme or "https"
    if key:
        opts.update(access_key=key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**opts)


def ensure_s3_fsspec() -> bool:
    """Make fsspec able to open ``s3://`` (for Dask); True if the pyarrow bridge was registered."""
    global _DONE
    with _LOCK:
        if _DONE:
            return False
        _DONE = True
        try:
            import s3fs  # noqa: F401
        except ImportError:
            pass
        else:
            return False
        import fsspec
        from fsspec.implementations.arrow import ArrowFSWrapper

        class ArrowS3FileSystem(ArrowFSWrapper):
            """fsspec's ``s3`` protocol served by pyarrow's S3 filesystem (see the module docstring)."""

            protocol = ("s3", "s3a")

            def __init__(self, client_kwargs: dict[str, Any] | None = None, key: str | None = None,
                         secret: str | None = None, token: str | None = None, **kwargs: Any) -> None:
                endpoint = (client_kwargs or {}).get("endpoint_url") or kwargs.pop("endpoint_url", None)
                for unused in ("anon", "use_ssl", "config_kwargs", "s3_additional_kwargs"):
                    kwargs.pop(unused, None)
                super().__init__(arrow_s3_filesystem(endpoint, key, secret, token), **kwargs)

        fsspec.register_implementation("s3", ArrowS3FileSystem, clobber=False)
        fsspec.register_implementation("s3a", ArrowS3FileSystem, clobber=False)
        return True
