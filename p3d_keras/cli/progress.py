"""The progress display of the programs that work through many videos (`p3d-tfrecords convert`,
`p3d-extract-features`): a bar on a terminal, a log line every 10 s otherwise."""
import time


class ProgressDisplay:
    """Called with a progress snapshot (`done`, `total` and whatever `describe` reads): on a
    terminal (`interactive`) redraws a bar and `describe(progress)` on one line of `stream`;
    otherwise logs that text to `logger` every 10 s and at the end. `close()` ends the line."""

    def __init__(self, stream, interactive, describe, logger):
        self.stream, self.interactive, self.describe, self.logger = stream, interactive, describe, logger
        self.last = 0.0

    def __call__(self, p):
        text = self.describe(p)
        if self.interactive:
            filled = int(30 * p.done / p.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {text}\033[K")
            self.stream.flush()
        elif p.done == p.total or time.monotonic() - self.last >= 10:
            self.last = time.monotonic()
            self.logger.info("%s", text)

    def close(self):
        if self.interactive:
            self.stream.write("\n")
