"""Megatron-style training logs, TensorBoard scalars, a terminal progress bar and the loss plot.

The iteration line keeps Megatron's exact shape because the MindSpeed-MM scripts parse it:
`awk -F ':' '{print$5}'` must land on the elapsed time (hence the `[YYYY-MM-DD HH:MM:SS]`
prefix with its two colons) and `tokens per sample:` is read up to the next `|`.
"""
from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import List, Optional, Tuple


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def format_iteration_line(iteration: int, train_iters: int, consumed: int, elapsed_ms: float, lr: float,
                          gbs: int, loss: float, grad_norm: Optional[float],
                          tokens_per_sample: Optional[float] = None) -> str:
    s = f" [{_now()}] iteration {iteration:8d}/{train_iters:8d} |"
    s += f" consumed samples: {consumed:12d} |"
    s += f" elapsed time per iteration (ms): {elapsed_ms:.1f} |"
    s += f" learning rate: {lr:.6E} |"
    s += f" global batch size: {gbs:5d} |"
    s += f" lm loss: {loss:.6E} |"
    s += " loss scale: 1.0 |"
    if grad_norm is not None:
        s += f" grad norm: {grad_norm:.3f} |"
    if tokens_per_sample is not None:
        s += f" tokens per sample: {tokens_per_sample:.1f} |"
    nan = 0 if math.isfinite(loss) else 1
    s += f" number of skipped iterations: {0:3d} | number of nan iterations: {nan:3d} |"
    return s


def format_validation_lines(iteration: int, loss: float, where: str = "validation") -> str:
    ppl = math.exp(min(20.0, loss))
    body = f" {where} loss at iteration {iteration} | lm loss value: {loss:.6E} | lm loss PPL: {ppl:.6E} | "
    bar = "-" * (len(body) + 1)
    return f"{bar}\n{body}\n{bar}"


class _TensorBoard:
    """Scalars written with tensorboard's own event writer (no torch / tensorflow needed)."""

    def __init__(self, logdir: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        os.makedirs(logdir, exist_ok=True)
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._writer = EventFileWriter(logdir)

    def scalar(self, tag: str, value: float, step: int):
        summary = self._summary_pb2.Summary(value=[self._summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(self._event_pb2.Event(summary=summary, step=int(step), wall_time=time.time()))

    def close(self):
        self._writer.flush()
        self._writer.close()


class TrainLogger:
    """Prints on the logging rank only (Megatron prints on the last rank)."""

    def __init__(self, train_iters: int, is_logging_rank: bool, tensorboard_dir: Optional[str] = None,
                 stream=None):
        self.train_iters = train_iters
        self.active = is_logging_rank
        self.stream = stream or sys.stdout
        self.history: List[Tuple[int, float]] = []
        self.val_history: List[Tuple[int, float]] = []
        self.tb = _TensorBoard(tensorboard_dir) if (tensorboard_dir and is_logging_rank) else None
        self._bar = None
        if self.active and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self._bar = tqdm(total=train_iters, desc="training", unit="it", dynamic_ncols=True, leave=True)
        self._printed_notices = set()

    def print(self, text: str):
        if not self.active:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, file=self.stream, flush=True)

    def notice(self, text: str):
        """One-time start-up notice (repeated text is printed once)."""
        if text not in self._printed_notices:
            self._printed_notices.add(text)
            self.print(f"notice: {text}")

    def iteration(self, iteration: int, consumed: int, elapsed_ms: float, lr: float, gbs: int, loss: float,
                  grad_norm: Optional[float], tokens_per_sample: Optional[float], log_now: bool):
        self.history.append((iteration, loss))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}")
        if log_now:
            self.print(format_iteration_line(iteration, self.train_iters, consumed, elapsed_ms, lr, gbs, loss,
                                             grad_norm, tokens_per_sample))
        if self.tb is not None:
            self.tb.scalar("lm loss", loss, iteration)
            self.tb.scalar("learning-rate", lr, iteration)
            self.tb.scalar("batch-size", gbs, iteration)
            if grad_norm is not None:
                self.tb.scalar("grad-norm", grad_norm, iteration)
            if tokens_per_sample is not None:
                self.tb.scalar("tokens-per-sample", tokens_per_sample, iteration)

    def validation(self, iteration: int, loss: float, where: str = "validation"):
        self.val_history.append((iteration, loss))
        self.print(format_validation_lines(iteration, loss, where))
        if self.tb is not None:
            self.tb.scalar("lm loss validation", loss, iteration)

    def plot(self, path: str) -> Optional[str]:
        """Loss curve PNG (people would rather look than read)."""
        if not self.active or not self.history:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        its, losses = zip(*self.history)
        ax.plot(its, losses, label="train lm loss", color="tab:blue")
        if self.val_history:
            vi, vl = zip(*self.val_history)
            ax.plot(vi, vl, "o-", label="validation lm loss", color="tab:orange")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path

    def close(self):
        if self._bar is not None:
            self._bar.close()
        if self.tb is not None:
            self.tb.close()
