"""Megatron-style training logs, throughput and ETA, a progress line, the memory line, TensorBoard
and W&B scalars, and the loss plot.

The iteration line keeps Megatron's exact shape because the MindSpeed-MM scripts parse it:
`awk -F ':' '{print$5}'` must land on the elapsed time (hence the `[YYYY-MM-DD HH:MM:SS]`
prefix with its two colons) and `tokens per sample:` is read up to the next `|`. Our own fields
(throughput, ETA, real tokens per sample) come after Megatron's last field, so every field before
them is where Megatron has it.
"""
from __future__ import annotations

import datetime
import math
import os
import sys
import time
from typing import Dict, List, Optional, Tuple


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def format_iteration_line(iteration: int, train_iters: int, consumed: int, elapsed_ms: float, lr: float,
                          gbs: int, loss: float, grad_norm: Optional[float],
                          tokens_per_sample: Optional[float] = None, extras: str = "") -> str:
    """Megatron's line. `tokens_per_sample` (--log-tps): MindSpeed-MM's figure, the sequence length
    the language model sees (padding included), in its place: MindSpeed-MM's loss dict holds it
    before the loss, and Megatron prints the loss dict in order as `key: %.6E`."""
    s = f" [{_now()}] iteration {iteration:8d}/{train_iters:8d} |"
    s += f" consumed samples: {consumed:12d} |"
    s += f" elapsed time per iteration (ms): {elapsed_ms:.1f} |"
    s += f" learning rate: {lr:.6E} |"
    s += f" global batch size: {gbs:5d} |"
    if tokens_per_sample is not None:
        s += f" tokens per sample: {tokens_per_sample:.6E} |"
    s += f" lm loss: {loss:.6E} |"
    s += " loss scale: 1.0 |"
    if grad_norm is not None:
        s += f" grad norm: {grad_norm:.3f} |"
    nan = 0 if math.isfinite(loss) else 1
    s += f" number of skipped iterations: {0:3d} | number of nan iterations: {nan:3d} |"
    return s + extras


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Window:
    """What the loop measured over one log interval, for the fields after Megatron's."""

    def __init__(self, elapsed_ms: float, gbs: int, remaining_iters: int, tokens_per_sample: Optional[float],
                 real_tokens_per_sample: Optional[float] = None, elapsed_total_s: float = 0.0):
        self.elapsed_ms, self.gbs, self.remaining = elapsed_ms, gbs, remaining_iters
        self.tokens_per_sample, self.real_tokens_per_sample = tokens_per_sample, real_tokens_per_sample
        self.elapsed_total_s = elapsed_total_s

    @property
    def samples_per_second(self) -> float:
        return self.gbs * 1000.0 / self.elapsed_ms if self.elapsed_ms > 0 else 0.0

    @property
    def tokens_per_second(self) -> Optional[float]:
        """The scripts' "Consumed Tokens per Second": samples/s x tokens per sample (padded)."""
        if self.tokens_per_sample is None:
            return None
        return self.samples_per_second * self.tokens_per_sample

    @property
    def eta_seconds(self) -> float:
        return self.remaining * self.elapsed_ms / 1000.0

    def fields(self, with_real_tokens: bool) -> str:
        s = " throughput:"
        if self.tokens_per_second is not None:
            s += f" {self.tokens_per_second:.1f} tokens/s,"
        s += f" {self.samples_per_second:.3f} samples/s |"
        s += f" ETA: {format_duration(self.eta_seconds)} |"
        if with_real_tokens and self.real_tokens_per_sample is not None:
            # the non-padding tokens per sample (the figure --log-tps printed before)
            s += f" real tokens/sample: {self.real_tokens_per_sample:.1f} |"
        return s


def format_progress_line(iteration: int, train_iters: int, loss: float, window: Window, width: int = 20) -> str:
    """The compact progress display for logs without a terminal (msrun workers write to files)."""
    frac = min(1.0, iteration / max(1, train_iters))
    done = int(round(frac * width))
    return (f" progress: [{'#' * done}{'.' * (width - done)}] {iteration}/{train_iters} ({frac:.0%}) | "
            f"loss {loss:.4f} | {window.samples_per_second:.3f} samples/s | "
            f"elapsed {format_duration(window.elapsed_total_s)} | ETA {format_duration(window.eta_seconds)}")


def format_memory_line(rank: int, iteration: int, stats: Dict[str, float]) -> str:
    """Megatron's `report_memory` line (MB as Python prints the float), after the first logged
    iterations; MindSpeed-MM's system tests parse allocated / max allocated from it."""
    return (f"[Rank {rank}] (after {iteration} iterations) memory (MB) | allocated: {stats['allocated']} | "
            f"max allocated: {stats['max_allocated']} | reserved: {stats['reserved']} | "
            f"max reserved: {stats['max_reserved']}")


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
    """Prints on the logging rank only (Megatron prints on the last rank); the memory line is
    printed by each rank that reports it (Megatron: the ranks of data-parallel index 0)."""

    def __init__(self, train_iters: int, is_logging_rank: bool, tensorboard_dir: Optional[str] = None,
                 stream=None, log_tps: bool = False, wandb=None):
        self.train_iters = train_iters
        self.active = is_logging_rank
        self.stream = stream or sys.stdout
        self.log_tps = log_tps
        self.history: List[Tuple[int, float]] = []
        self.val_history: List[Tuple[int, float]] = []
        self.tb = _TensorBoard(tensorboard_dir) if (tensorboard_dir and is_logging_rank) else None
        self.wandb = wandb if is_logging_rank else None
        self._bar = None
        if self.active and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self._bar = tqdm(total=train_iters, desc="training", unit="it", dynamic_ncols=True, leave=True)
        self._printed_notices = set()
        self.memory_reported = False
        self._logged_upto = 0           # len(history) at the last iteration line

    def interval_loss(self) -> float:
        """Mean loss of the iterations since the last iteration line: Megatron prints the loss dict
        averaged over the log interval (the same as the iteration's loss with --log-interval 1)."""
        window = [loss for _, loss in self.history[self._logged_upto:]]
        self._logged_upto = len(self.history)
        return sum(window) / len(window) if window else float("nan")

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

    def scalar(self, tag: str, value: float, step: int):
        """One scalar to TensorBoard and W&B (the same names in both)."""
        if self.tb is not None:
            self.tb.scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log({tag: float(value)}, step=int(step))

    def iteration(self, iteration: int, consumed: int, elapsed_ms: float, lr: float, gbs: int, loss: float,
                  grad_norm: Optional[float], tokens_per_sample: Optional[float], log_now: bool,
                  window: Optional[Window] = None):
        self.history.append((iteration, loss))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}")
        if log_now:
            extras = window.fields(self.log_tps) if window is not None else ""
            mean = self.interval_loss()
            self.print(format_iteration_line(iteration, self.train_iters, consumed, elapsed_ms, lr, gbs, mean,
                                             grad_norm, tokens_per_sample, extras))
            if window is not None and self._bar is None:
                self.print(format_progress_line(iteration, self.train_iters, mean, window))
        self.scalar("lm loss", loss, iteration)
        self.scalar("learning-rate", lr, iteration)
        self.scalar("batch-size", gbs, iteration)
        if grad_norm is not None:
            self.scalar("grad-norm", grad_norm, iteration)
        if tokens_per_sample is not None:
            self.scalar("tokens-per-sample", tokens_per_sample, iteration)
        if window is not None:            # given on the logged iterations
            self.scalar("iteration-time", elapsed_ms / 1000.0, iteration)
            self.scalar("samples-per-second", window.samples_per_second, iteration)
            if window.tokens_per_second is not None:
                self.scalar("tokens-per-second", window.tokens_per_second, iteration)
            self.scalar("eta-seconds", window.eta_seconds, iteration)
            if window.real_tokens_per_sample is not None:
                self.scalar("real-tokens-per-sample", window.real_tokens_per_sample, iteration)

    def memory(self, rank: int, iteration: int, stats: Dict[str, float]):
        """The memory line, once (after the first logged iterations), on the calling rank."""
        if self.memory_reported:
            return
        self.memory_reported = True
        line = format_memory_line(rank, iteration, stats)
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def validation(self, iteration: int, loss: float, where: str = "validation"):
        self.val_history.append((iteration, loss))
        self.print(format_validation_lines(iteration, loss, where))
        self.scalar("lm loss validation", loss, iteration)

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
        if self.wandb is not None:
            self.wandb.finish()
