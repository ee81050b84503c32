"""An archive's blobs.txt: each blob's sha256 and size, checked, and held compactly
as the unpacking processes get it."""

from __future__ import annotations

import array
from typing import IO

from ccache_cli.errors import ArchiveError

BLOBS_NAME = "blobs.txt"


class BlobList:
    """An archive's blobs.txt: each blob's sha256 and size, one `<sha256> <size>` line
    per blob, sorted by name. Held compactly, as the unpacking processes get it: the
    names (64 hex characters each) in one bytes object and the sizes in an array, about
    72 bytes a blob where a dict of str took 400 in every process."""

    def __init__(self, names: bytes, sizes: array.array[int]) -> None:
        self._names = names
        self._sizes = sizes

    _ENTRY = 64 + 8  # bytes per blob in to_bytes: its name and its size

    @staticmethod
    def listing(names: list[str], sizes: list[int]) -> bytes:
        """blobs.txt for these blobs, `names` sorted."""
        return "".join(map("{} {}\n".format, names, sizes)).encode()

    @classmethod
    def parse(cls, listing: bytes) -> BlobList:
        """A blobs.txt, checked: names of 64 hex digits, each once, sorted; sizes of at
        most 18 digits (they fit the array's 64 bits). Checked a field at a time in C, as
        a pattern for the whole file took 30 ms."""
        fields = listing.split()
        names, sizes = fields[0::2], fields[1::2]
        joined = b"".join(names)
        if (
            len(names) != len(sizes)
            or {*map(len, names)} - {64}
            or joined.translate(None, b"0123456789abcdef")
            or not all(map(bytes.isdigit, sizes))
            or max(map(len, sizes), default=0) > 18
        ):
            raise ArchiveError(f"{BLOBS_NAME} is malformed: each line must be a sha256 and a size")
        if not all(map(bytes.__lt__, names, names[1:])):
            raise ArchiveError(f"{BLOBS_NAME} is malformed: its blobs are not sorted, or one is listed twice")
        return cls(joined, array.array("Q", map(int, sizes)))

    @classmethod
    def of(cls, names: list[str], sizes: list[int]) -> BlobList:
        """From sorted names (sha256 hex digests) and their sizes."""
        return cls("".join(names).encode(), array.array("Q", sizes))

    def __len__(self) -> int:
        return len(self._sizes)

    def name(self, at: int) -> bytes:
        return self._names[64 * at : 64 * at + 64]

    def size(self, at: int) -> int:
        return self._sizes[at]

    def sizes(self) -> dict[str, int]:
        """Each blob's size by its name, in the list's order."""
        text = self._names.decode()
        return dict(zip((text[at : at + 64] for at in range(0, len(text), 64)), self._sizes))

    def find(self, sha256: bytes) -> int | None:
        """The place of a blob, by binary search; None if it is not listed."""
        low, high = 0, len(self._sizes)
        while low < high:
            middle = (low + high) // 2
            if self.name(middle) < sha256:
                low = middle + 1
            else:
                high = middle
        return low if low < len(self._sizes) and self.name(low) == sha256 else None

    def to_bytes(self) -> bytes:
        return self._names + self._sizes.tobytes()

    @classmethod
    def read(cls, source: IO[bytes], count: int) -> BlobList:
        """The `count` blobs that `to_bytes` wrote, read from `source`."""
        data = source.read(cls._ENTRY * count)
        sizes = array.array("Q")
        sizes.frombytes(data[64 * count :])
        return cls(data[: 64 * count], sizes)
