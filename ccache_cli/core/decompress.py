"""Decompress a zstd stream from stdin to stdout; `unpack` runs this file as a child.

python-zstandard holds the GIL while it decompresses, so in the unpacking process
decompression could not overlap hashing and writing blobs; as a process of its own
it gets a core, as zstd does next to tar. Only the first frame is read (what pack
writes), and nothing past it. Exit codes tell the parent what went wrong.
"""

import sys

import zstandard

NOT_ZSTD = 3
CORRUPT = 4  # zstd's message on stderr
TRUNCATED = 5
MAGIC = b"\x28\xb5\x2f\xfd"  # how every zstd frame starts
_CHUNK = 1 << 20


def main() -> int:
    source, out = sys.stdin.buffer, sys.stdout.buffer
    data = source.read(len(MAGIC))
    if data != MAGIC:
        return NOT_ZSTD
    stream = zstandard.ZstdDecompressor().decompressobj(write_size=_CHUNK)
    try:
        while data and not stream.eof:
            out.write(stream.decompress(data))
            data = source.read1(_CHUNK)
        out.flush()
    except zstandard.ZstdError as exc:
        sys.stderr.write(str(exc))
        return CORRUPT
    except BrokenPipeError:  # the parent has read all it wanted
        return 0
    return 0 if stream.eof else TRUNCATED


if __name__ == "__main__":
    sys.exit(main())
