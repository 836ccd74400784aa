"""``--shard i/n``: a contiguous slice of the rows, so that shard outputs concatenate to the unsharded output."""
from __future__ import annotations

import os
from dataclasses import dataclass

from galtools.errors import UsageProblem


@dataclass(frozen=True)
class Shard:
    index: int   # 0-based
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index_text, count_text = text.split("/")
            shard = cls(int(index_text), int(count_text))
        except ValueError:
            raise UsageProblem(f"--shard '{text}' is not of the form i/n", "e.g. --shard 0/4 for the first of 4 parts")
        if shard.count < 1 or not 0 <= shard.index < shard.count:
            raise UsageProblem(f"--shard {text}: need 0 <= i < n", "shards count from 0, e.g. 0/4 .. 3/4")
        return shard

    @classmethod
    def from_slurm(cls, environ=os.environ) -> "Shard | None":
        """The shard of a Slurm array task, counting from the array's first index, or None outside an array."""
        if "SLURM_ARRAY_TASK_ID" not in environ or "SLURM_ARRAY_TASK_COUNT" not in environ:
            return None
        task = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        return cls.parse(f"{task}/{int(environ['SLURM_ARRAY_TASK_COUNT'])}")

    def bounds(self, num_rows: int) -> tuple[int, int]:
        return (self.index * num_rows) // self.count, ((self.index + 1) * num_rows) // self.count

    def format_path(self, path: str) -> str:
        """Replace ``{shard}`` in an output path by a zero-padded part number that sorts in order."""
        width = len(str(self.count - 1))
        return path.replace("{shard}", f"{self.index:0{width}d}-of-{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
