"""Lightning strategies as tfgraph runs them.

``SpawnedDDP`` is Lightning's ``DDPStrategy`` that leaves its spawned processes the way they came: each worker
destroys its process group when the stage ends, before the process exits. Lightning leaves the group open,
and a gloo group still open at interpreter exit can abort the worker (``terminate called without an active
exception``, SIGABRT) after the stage itself has finished, which fails the whole run.
"""

from __future__ import annotations

import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy


class SpawnedDDP(DDPStrategy):
    """DDP whose workers close their process group at teardown (``trainer=ddp_sim``)."""

    def teardown(self) -> None:
        super().teardown()
        if self._start_method in ("spawn", "forkserver", "fork") and dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank is done with the group before any rank closes it
            dist.destroy_process_group()
