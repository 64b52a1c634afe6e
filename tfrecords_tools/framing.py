"""TFRecord framing without TensorFlow: each record is its length (8 bytes, little-endian), the
masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data (TensorFlow's
`tensorflow/core/lib/io/record_writer.cc`). The converter's workers frame their records as they
stream them out, so shards are written by concatenating files: nothing is held in memory and no
process of the converter imports TensorFlow. CRC32C comes from `google-crc32c` (C extension; in
the `video` extra), imported when a frame is first written or read (`read_frames`, for the
window index), so the `tf.data` reader needs only this module's constants.
"""
import functools
import logging
import os
import struct

HEADER_BYTES = 12  # length (8) + masked CRC of the length (4)
FOOTER_BYTES = 4  # masked CRC of the data
FRAMING_BYTES = HEADER_BYTES + FOOTER_BYTES
_MASK_DELTA = 0xA282EAD8
_READ_CHUNK = 1 << 20


@functools.cache
def crc32c():
    """The `google_crc32c` module (writers and `read_frames` only; see the module docstring)."""
    import google_crc32c  # noqa: PLC0415 (writers and read_frames only; see the module docstring)

    if google_crc32c.implementation != "c":
        logging.getLogger(__name__).warning(
            "google-crc32c runs its pure-Python CRC32C (no C extension for this platform): "
            "writing TFRecords will be slow")
    return google_crc32c


def masked_crc32c(crc):
    """TFRecord's masking of a CRC32C value (rotate right by 15 bits, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class FrameWriter:
    """Writes one TFRecord frame of `length` data bytes to the binary file `out`, streaming: the
    header now, the data through `write` (CRC computed on the way), the footer at `finish`,
    which raises if the data written was not `length` bytes."""

    def __init__(self, out, length):
        self.out, self.length, self.written, self.crc = out, length, 0, 0
        header = struct.pack("<Q", length)
        out.write(header + struct.pack("<I", masked_crc32c(crc32c().value(header))))

    def write(self, chunk):
        self.crc = crc32c().extend(self.crc, chunk)
        self.written += len(chunk)
        return self.out.write(chunk)

    def finish(self):
        if self.written != self.length:
            raise ValueError(f"Expected {self.length} bytes of record data. Received: {self.written}")
        self.out.write(struct.pack("<I", masked_crc32c(self.crc)))


def read_frames(f, name):
    """`(start, length)` of each record's data in the open binary file `f` (the shard `name`),
    after checking its framing and CRC32C (read in chunks: memory does not grow with the record);
    a broken frame (truncated, or a length or data CRC that does not match) raises a `ValueError`
    naming the shard and the record's byte. The window index's reader of shards."""
    crc = crc32c()
    position = 0
    while header := f.read(HEADER_BYTES):
        def broken(what):
            return ValueError(f"Expected intact TFRecord records. Received: {what} in the record at byte "
                              f"{position} of shard={os.fspath(name)}")
        if len(header) < HEADER_BYTES:
            raise broken("a truncated header")
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if masked_crc32c(crc.value(header[:8])) != length_crc:
            raise broken("a corrupt length")
        value, left = 0, length
        while left:
            chunk = f.read(min(left, _READ_CHUNK))
            if not chunk:
                raise broken("truncated data")
            value, left = crc.extend(value, chunk), left - len(chunk)
        footer = f.read(FOOTER_BYTES)
        if len(footer) < FOOTER_BYTES:
            raise broken("truncated data")
        if masked_crc32c(value) != struct.unpack("<I", footer)[0]:
            raise broken("corrupt data (CRC32C mismatch)")
        end = f.tell()
        yield position + HEADER_BYTES, length
        f.seek(end)
        position = end
