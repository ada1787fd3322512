"""A rich progress bar for training: epoch, loss, accuracy, firing rate, time left; ``printer``
for the one-line status of the phases around it (loading data, measuring, resuming)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Shows step progress and one summary line per epoch; silent when not ``enabled``."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._bar = None

    @contextmanager
    def run(self, epochs: int, steps_per_epoch: int, done_steps: int):
        if not self.enabled:
            yield self
            return
        self._bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        with self._bar:
            self._task = self._bar.add_task(
                "train", total=epochs * steps_per_epoch, completed=done_steps, stats=""
            )
            yield self
        self._bar = None

    def advance(self, loss: float, acc: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, stats=f"loss {loss:.3f} acc {acc:.3f}")

    def epoch_done(self, row: dict) -> None:
        if self.enabled:
            self.console.print(
                f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  "
                f"train {row['train_accuracy']:.4f}  test {row['test_accuracy']:.4f}  "
                f"firing rate {row['firing_rate']:.3f}"
            )


def printer(enabled: bool = True, console: Console | None = None) -> Callable[[str], None]:
    """A function printing one status line to stderr (a long silent phase, a resume point);
    it prints nothing when not ``enabled``."""
    if not enabled:
        return lambda text: None
    console = console or Console(stderr=True)
    return lambda text: console.print(text, highlight=False, soft_wrap=True)
