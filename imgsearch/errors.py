"""The exception tree. The core raises these; only the CLI turns them into messages and exit codes.

    ImgSearchError                 exit 1 unless stated
     ├── ConfigError               exit 2: a setting has a bad value, type or key
     ├── UsageError                exit 2: bad invocation (missing folder, bad query syntax)
     │    └── NotFoundError        exit 2: no indexed image has that id
     ├── WeightsError              model weights cannot be had (no network, bad path, wrong architecture)
     ├── ModelMismatchError        the index was built with another model
     ├── IndexEmptyError           nothing is indexed yet
     ├── BusyError                 another process is writing to the same home
     ├── WatchError                the filesystem cannot be watched (inotify limits)
     ├── InterruptedRun            an index run was stopped part-way (what was committed stays)
     ├── ClusterError              the Ray cluster of `index --ray` cannot be reached or failed the run
     ├── XmpError                  an XMP sidecar cannot be read or written (reported per file by export)
     └── StoreError                the database cannot be used
          └── SchemaTooNewError    the database was written by a newer imgsearch

Every message is one line that says what to do next.
"""

from __future__ import annotations


class ImgSearchError(Exception):
    """Base of every error imgsearch raises on purpose."""

    exit_code = 1


class ConfigError(ImgSearchError):
    exit_code = 2


class UsageError(ImgSearchError):
    exit_code = 2


class NotFoundError(UsageError):
    pass


class WeightsError(ImgSearchError):
    pass


class ModelMismatchError(ImgSearchError):
    pass


class IndexEmptyError(ImgSearchError):
    pass


class BusyError(ImgSearchError):
    pass


class WatchError(ImgSearchError):
    pass


class InterruptedRun(ImgSearchError):
    exit_code = 130


class ClusterError(ImgSearchError):
    """`index --ray`: Ray is missing, its cluster cannot be reached, or the cluster failed the run."""


class XmpError(ImgSearchError):
    """A sidecar cannot be read as XMP, or cannot be written."""


class StoreError(ImgSearchError):
    pass


class SchemaTooNewError(StoreError):
    pass


class ImageDecodeError(Exception):
    """One file could not be turned into an image; carries the reason recorded for it.

    Not an ImgSearchError: it never reaches the user as an error, only as a line in the skipped list.
    """
