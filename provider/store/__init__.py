"""Pure, mergeable key-value state. Nothing in this package does I/O.

* :mod:`.hlc`: hybrid logical clock stamps for last-writer-wins.
* :mod:`.causal`: causal contexts (which list/set elements a replica has seen).
* :mod:`.entry`: one key's state and the merge (join) rules per type.
* :mod:`.store`: the Redis-like operations, each returning its result and a replicable
  :class:`~.store.Change`.
* :mod:`.errors`: the refusals an operation can answer with.
"""

from .entry import Entry, Kind
from .errors import (
    IncrementOverflowError,
    NotIntegerError,
    OutOfMemoryError,
    StoreError,
    TooLargeError,
    TooMuchWorkError,
    WrongTypeError,
)
from .store import (
    BUCKETS,
    MAX_RESULT_BYTES,
    MAX_RESULT_ITEMS,
    MAX_SET_NAMES,
    MAX_SET_NAMES_GIVEN,
    MAX_SET_SCAN,
    SUB_BUCKETS,
    Change,
    KeyValueStore,
    bucket_of,
    distinct_names,
    sub_bucket_of,
)

__all__ = [
    "BUCKETS",
    "MAX_RESULT_BYTES",
    "MAX_RESULT_ITEMS",
    "MAX_SET_NAMES",
    "MAX_SET_NAMES_GIVEN",
    "MAX_SET_SCAN",
    "SUB_BUCKETS",
    "Change",
    "Entry",
    "IncrementOverflowError",
    "KeyValueStore",
    "Kind",
    "NotIntegerError",
    "OutOfMemoryError",
    "StoreError",
    "TooLargeError",
    "TooMuchWorkError",
    "WrongTypeError",
    "bucket_of",
    "distinct_names",
    "sub_bucket_of",
]
