"""A partition's last processed record, and whether the log must show it again before the
log is trusted: on a new owner's first fetch, and when the log looks short. A committed record
stays where it was (read_committed never hid it from us, or we would not have processed it),
so another record at its offset, or none until a later one, means the log was replaced."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from aiokafka import ConsumerRecord


def fingerprint(record: ConsumerRecord) -> bytes:
    """Identity of a record: a replaced log will not have the same one at the same offset."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(struct.pack(">qq", record.offset, record.timestamp))
    digest.update(record.key or b"")
    digest.update(b"\x00")
    digest.update(record.value or b"")
    return digest.digest()


class LastRecord:
    """The last processed record (offset, fingerprint) and the check it may be waiting for."""

    def __init__(self) -> None:
        self._last: tuple[int, bytes] | None = None  # None before the first batch
        # That record while it must be re-read and checked; None once checked.
        self._verify: tuple[int, bytes] | None = None

    def claimed(self, offset: int | None, print_: bytes | None, next_offset: int) -> None:
        """A claim's stored last record: checked before the log is trusted."""
        self._last = None
        if offset is not None:
            assert print_ is not None and offset < next_offset
            self._last = (offset, print_)
        self._verify = self._last

    def processed(self, offset: int, print_: bytes) -> None:
        self._last = (offset, print_)

    def verify_again(self) -> bool:
        """Check the last processed record again before taking more records; False when no
        record was processed (nothing to check)."""
        self._verify = self._last
        return self._verify is not None

    def trust_log(self) -> None:
        """Stop waiting for the last record: it is gone for a known, harmless reason."""
        self._verify = None

    @property
    def verifying(self) -> bool:
        return self._verify is not None

    def fetch_from(self, next_offset: int) -> int:
        """Where to seek: the last processed record when it must be checked first."""
        return self._verify[0] if self._verify is not None else next_offset

    def log_replaced(self, records: Sequence[ConsumerRecord]) -> str | None:
        """Why the fetched records (from a fetch that started at fetch_from) show a replaced
        log, or None when they continue ours."""
        if self._verify is None:
            return None
        offset, expected = self._verify
        first = records[0]
        if first.offset != offset:
            return f"record {offset} is gone: the log continues at {first.offset}"
        if fingerprint(first) != expected:
            return f"record {first.offset} is not the record processed at that offset"
        return None

    def checked(self, records: Sequence[ConsumerRecord]) -> Sequence[ConsumerRecord]:
        """The fetched records without the one checked, if one was awaited (it was
        processed before); the log is trusted from here on."""
        if self._verify is None:
            return records
        assert self.log_replaced(records) is None, "caller must check log_replaced first"
        self._verify = None
        return records[1:]
