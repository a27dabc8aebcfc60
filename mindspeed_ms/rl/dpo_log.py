"""DPO iteration lines: Megatron's line with the reward metrics after the loss, as Megatron prints
every entry of its loss dict (`lm loss: ... | rewards/chosen: ... | ... | loss scale: ...`)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from mindspeed_ms.training.train_log import TrainLogger, format_iteration_line, format_progress_line

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def insert_metrics(line: str, metrics: Dict[str, float]) -> str:
    extra = "".join(f" {k}: {metrics[k]:.6E} |" for k in METRICS if k in metrics)
    cut = line.index(" loss scale:")
    return line[:cut] + extra + line[cut:]


class DPOTrainLogger(TrainLogger):
    """`pending` holds the metrics of the step about to be logged (set by the DPO trainer)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pending: Dict[str, float] = {}
        self.metric_history: List[Tuple[int, Dict[str, float]]] = []

    def iteration(self, iteration, consumed, elapsed_ms, lr, gbs, loss, grad_norm, tokens_per_sample, log_now,
                  window=None):
        super().iteration(iteration, consumed, elapsed_ms, lr, gbs, loss, grad_norm, tokens_per_sample, False,
                          window)
        metrics = dict(self.pending)
        self.metric_history.append((iteration, metrics))
        if log_now:
            extras = window.fields(self.log_tps) if window is not None else ""
            mean = self.interval_loss()
            self.print(insert_metrics(format_iteration_line(iteration, self.train_iters, consumed, elapsed_ms, lr,
                                                            gbs, mean, grad_norm, tokens_per_sample, extras),
                                      metrics))
            if window is not None and self._bar is None:
                self.print(format_progress_line(iteration, self.train_iters, mean, window))
        for k, v in metrics.items():
            self.scalar(k, v, iteration)
