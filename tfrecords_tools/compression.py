"""How a shard is compressed: the names callers pass (`WRITER_COMPRESSIONS`,
`READER_COMPRESSIONS`), and the compression told from a shard's first bytes, never from its name:
the one test every reader of shards uses (`shards.shard_compression`, `index.build_index`, and
through them the reader, `inspection`, `shards.count_records` and the programs).

A plain TFRecord file starts with its first record's header: the length (8 bytes, little-endian)
and the masked CRC32C of those 8 bytes (`framing`). A GZIP file starts with gzip's magic `1f 8b`
and its method byte `08` (deflate). The two can overlap: a plain shard whose first record is
559,903 + k * 2**24 bytes long starts with `1f 8b 08` too. So the header is tested first: 12
bytes whose last 4 are the masked CRC32C of the first 8 are a plain shard, else the gzip magic
and method mean GZIP, else the shard is plain (empty, or with a broken first header, which the
readers report as a corrupt record naming the shard). A gzip header never passes for a record
header when it has no time and no name, as the converter's and TensorFlow's have (whatever its
XFL and OS bytes); any other gzip header passes by a 1 in 2**32 chance. The bytes therefore
decide alone; the manifest's `compression` is not consulted (beam's output and globs have none).

Neither TensorFlow nor google-crc32c: the CRC32C of 8 bytes is computed here, bit by bit.
"""
import struct

from . import framing

GZIP = "GZIP"
PLAIN = ""  # TFRecordDataset's compression_type for uncompressed files
AUTO = "auto"  # readers only: each shard as its first bytes say
WRITER_COMPRESSIONS = (None, GZIP)  # what the converter writes: None (uncompressed) or GZIP
READER_COMPRESSIONS = (AUTO, None, PLAIN, GZIP)  # what readers accept: AUTO, or the one a shard must have
GZIP_HEADER = b"\x1f\x8b\x08"  # gzip's magic and its one compression method, deflate
_CRC32C_POLYNOMIAL = 0x82F63B78  # Castagnoli, reflected


def _crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLYNOMIAL if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def is_record_header(head):
    """Whether the bytes `head` start with an intact TFRecord header (length + its masked CRC)."""
    if len(head) < framing.HEADER_BYTES:
        return False
    return framing.masked_crc32c(_crc32c(head[:8])) == struct.unpack("<I", head[8:framing.HEADER_BYTES])[0]


def detect(head):
    """`GZIP` or `PLAIN` (`""`) for a file whose first bytes are `head` (at least
    `framing.HEADER_BYTES` of them when the file has that many; see the module docstring)."""
    if is_record_header(head):
        return PLAIN
    return GZIP if head.startswith(GZIP_HEADER) else PLAIN


def shard_compression(path, expected=AUTO, open_file=open):
    """`GZIP` or `PLAIN` (`""`) for the shard `path`, from its first bytes; `open_file(path, "rb")`
    opens it (e.g. `tf.io.gfile.GFile` for `gs://` paths).

    `expected` (one of `READER_COMPRESSIONS`) is `AUTO`, or the compression the caller insists on
    (`None` and `PLAIN` both mean uncompressed). Raises a `ValueError` naming `expected` when it is
    not one of them, or naming the shard when the shard is otherwise; `OSError` if it cannot be
    read."""
    if expected not in READER_COMPRESSIONS:
        raise ValueError(f"Expected compression to be one of {READER_COMPRESSIONS}. Received: compression={expected!r}")
    with open_file(path, "rb") as f:
        found = detect(f.read(framing.HEADER_BYTES))
    if expected != AUTO and (expected or PLAIN) != found:
        kinds = {GZIP: "a GZIP-compressed", PLAIN: "an uncompressed"}
        raise ValueError(f"Expected {kinds[expected or PLAIN]} shard (compression={expected!r}). Received: "
                         f"{kinds[found]} shard={path}; leave compression='auto' to read each shard as its bytes say")
    return found
