"""Device prefetch: keeps `size` batches already transferred (sharded) ahead of the step, while
reporting the position of the last batch actually handed out, so a checkpoint taken between
steps resumes at the right example even though the source has read further."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any


class Prefetch(Iterator[Any]):
    def __init__(self, source: Any, transform: Callable[[Any], Any], size: int = 2) -> None:
        if size < 0:
            raise ValueError(f"prefetch size={size} must be >= 0")
        self.source, self.transform, self.size = source, transform, size
        self._queue: collections.deque[tuple[Any, dict[str, Any]]] = collections.deque()
        self._position = source.position()

    def position(self) -> dict[str, Any]:
        return self._position

    def __next__(self) -> Any:
        # JAX transfers asynchronously: batches placed here are in flight while the step runs.
        while len(self._queue) <= self.size:
            batch = next(self.source)
            self._queue.append((self.transform(batch), self.source.position()))
        batch, self._position = self._queue.popleft()
        return batch
