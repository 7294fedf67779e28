"""A checkpoint writer that pauses before its rename, so a test can kill -9 a fit mid-write."""

from __future__ import annotations

import time

from lightsum.atomic import AtomicCheckpointIO


class SlowAtomicCheckpointIO(AtomicCheckpointIO):
    def write(self, data, out) -> None:
        super().write(data, out)
        out.file.flush()
        time.sleep(0.4)  # the partial file is complete on disk but not yet renamed
