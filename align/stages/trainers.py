"""TRL's trainers with align's speed-ups, each at one documented seam.

- `AlignSFTTrainer` / `AlignDPOTrainer` replace the fused-LM-head forward TRL installs in `__init__` with
  align's padding-free one (`align.stages.packing`): same batches, same losses, no compute on padding.
- `AlignDPOTrainer` overrides `_precompute_ref_logps` (TRL 1.16, used when `precompute_ref_log_probs`) so the
  reference log-probs come from align's disk cache (`align.stages.ref_cache`) when the data and the reference
  weights are unchanged, and are computed through the padding-free forward otherwise, sharded over the ranks
  (`align.stages.ref_logps`: TRL's own precompute fails with more than one process on in-memory datasets).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from trl import DPOTrainer, SFTTrainer

from align.stages import packing, ref_cache
from align.stages.ref_logps import precompute_reference

log = logging.getLogger("align")


class AlignSFTTrainer(SFTTrainer):
    """SFTTrainer whose training forward is padding-free (`packed_forward`)."""

    def __init__(self, *args, packed_forward: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.packed_forward = packed_forward and packing.install(self.model, packing.SFT_OUTPUTS)


class AlignDPOTrainer(DPOTrainer):
    """DPOTrainer with the padding-free forward and reference log-probs cached on disk (`ref_cache_dir`)."""

    def __init__(self, *args, packed_forward: bool = True, ref_cache_dir: Path | None = None, **kwargs):
        self._align_packed = packed_forward
        self._align_ref_cache_dir = ref_cache_dir
        self.reference_cache: dict = {}  # name -> {"path", "hit", "seconds"}: what the precompute did
        super().__init__(*args, **kwargs)
        self._install_forward()

    def _install_forward(self) -> None:
        outputs = packing.DPO_OUTPUTS + (("log_sum_sq_probs",) if self.use_weighting else ())
        self.packed_forward = self._align_packed and packing.install(self.model, outputs)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        self._install_forward()  # TRL runs this from __init__, after installing its own fused head
        start = time.perf_counter()
        compute = lambda: precompute_reference(self, dataset, batch_size)  # noqa: E731  (TRL's fails with >1 rank)
        if self._align_ref_cache_dir is None or self.is_deepspeed_enabled:  # ZeRO-3 shards what the key hashes
            out, path, hit = compute(), None, False
        else:
            args = self.args
            path = ref_cache.cache_path(
                Path(self._align_ref_cache_dir),
                name,
                ref_cache.data_digest(dataset, args.max_length, args.truncation_mode),
                ref_cache.reference_digest(self.accelerator.unwrap_model(self.model)),
            )
            out, hit = ref_cache.with_reference_logps(
                dataset, path, compute, self.accelerator.is_main_process, self.accelerator.wait_for_everyone
            )
        seconds = time.perf_counter() - start
        self.reference_cache[name] = {"path": None if path is None else str(path), "hit": hit, "seconds": seconds}
        log.info(
            "DPO reference log-probs (%s, %d rows): %s in %.1f s",
            name,
            len(dataset),
            "loaded from the cache" if hit else "computed",
            seconds,
        )
        return out
