"""One collapse guard for the objectives whose representations can collapse (wav2vec 2.0's codebook,
data2vec's targets, BEST-RQ's predictions): each says per update whether its collapse test fails; the
guard counts failures in a row and, after `patience`, warns once, stops, or asks the loop to roll back
to the newest checkpoint saved before the collapse began (`on_collapse: warn | stop | rollback`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from hfssl.errors import RollbackRequested

logger = logging.getLogger(__name__)


@dataclass
class CollapseGuard:
    cfg: object  # reads on_collapse ("warn" | "stop" | "rollback"), collapse_patience, output_dir
    streak: int = 0
    reported: bool = False
    last_healthy_step: int = 0

    def check(self, step: int, collapsed: Optional[bool], describe: Callable[[int], str], advice: str) -> Optional[str]:
        """Record update `step`; `collapsed` None means the update says nothing (skipped or empty).

        Returns a reason to stop (on_collapse=stop, or rollback with nothing to roll back to), raises
        `RollbackRequested` (rollback), or returns None. `describe(streak)` words the collapse."""
        if collapsed is None:
            return None
        if not collapsed:
            self.streak, self.reported, self.last_healthy_step = 0, False, step
            return None
        self.streak += 1
        if self.streak < self.cfg.collapse_patience:
            return None
        what = describe(self.streak)
        if self.cfg.on_collapse == "warn":
            if not self.reported:
                logger.warning("%s %s (on_collapse=warn: training goes on.)", what, advice)
                self.reported = True
            return None
        good = self.last_good_checkpoint()
        if self.cfg.on_collapse == "stop":
            return f"{what} Stopped (on_collapse=stop). {advice} Last checkpoint before the collapse: {good or 'none'}."
        if good is None:
            return (f"{what} on_collapse=rollback: no checkpoint was saved before step {self.last_healthy_step + 1} "
                    f"(the last healthy update); restart with other settings. {advice}")
        raise RollbackRequested(good, f"{what} on_collapse=rollback.")

    def last_good_checkpoint(self) -> Optional[str]:
        from hfssl.checkpointing import list_checkpoints

        good = [p for p in list_checkpoints(self.cfg.output_dir) if int(p.name.split("-")[1]) <= self.last_healthy_step]
        return str(good[-1]) if good else None

    def state_dict(self) -> dict:
        return {"collapse_streak": self.streak, "collapse_reported": int(self.reported), "last_healthy_step": self.last_healthy_step}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("collapse_streak", 0))
        self.reported = bool(state.get("collapse_reported", False))
        self.last_healthy_step = int(state.get("last_healthy_step", 0))
