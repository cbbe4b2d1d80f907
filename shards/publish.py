"""Write a whole shard set from a trainer or tool: roll over by count or bytes, publish at close.

Tars go up as they fill (``write_shard``: local temp file, then rename or a (multipart) upload
that only becomes visible when complete); ``index.json`` is written once, at a clean ``close``.
A writer killed or failing midway therefore leaves tars but no index, which is not a set to
any reader (``open_set``, ``find_sets``, ``verify``); the next clean run removes its leftover tars.
Rewriting an existing set first removes its index, so readers never pair an old index with new tars.
"""

from __future__ import annotations

from shards import format as fmt
from shards import storage
from shards.writer import write_index, write_shard


class ShardSetWriter:
    def __init__(
        self,
        folder: str,
        set_name: str,
        version: str,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        extra: dict | None = None,
        overwrite: bool = False,
    ):
        index = storage.join(folder, fmt.INDEX_NAME)
        if storage.exists(index):
            if not overwrite:
                raise FileExistsError(f"{index}: a published set is here; pass overwrite=True to replace it")
            storage.remove(index)
        fmt.shard_name(set_name, version, 0)  # checks the version before any work
        self.folder, self.set_name, self.version, self.extra = folder, set_name, version, extra
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[dict] = []
        self._pending: list[dict] = []
        self._bytes = 0

    def write(self, sample: dict[str, bytes]) -> None:
        """Add one sample (``__key__`` plus contract fields); held in memory until its shard is full."""
        self._pending.append(sample)
        self._bytes += sum(len(v) + 1024 for k, v in sample.items() if k != "__key__")  # + tar headers
        if len(self._pending) >= self.max_samples or self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            name = fmt.shard_name(self.set_name, self.version, len(self.shards))
            self.shards.append(write_shard(self._pending, storage.join(self.folder, name)))
            self._pending, self._bytes = [], 0

    def close(self) -> dict:
        """Write the last shard, drop tars of this set an earlier, interrupted writer left, publish the index."""
        self.flush()
        listed = {s["name"] for s in self.shards}
        for uri, _ in storage.list_files(self.folder):
            name = uri.replace("\\", "/").rsplit("/", 1)[-1]
            parsed = fmt.parse_shard_name(name)
            if parsed and (parsed["set"], parsed["version"]) == (self.set_name, self.version) and name not in listed:
                storage.remove(uri)
        return write_index(self.folder, self.set_name, self.version, self.shards, self.extra)

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()  # on an exception nothing is published
