"""What the training loop shows and hears on the terminal: a progress bar and Ctrl-C."""

from __future__ import annotations


class StopFlag:
    """First Ctrl-C asks the loop to stop at the next step boundary (checkpoint intact); a second one
    interrupts at once."""

    def __init__(self, log=print):
        self.requested = False
        self.log = log
        self._old = None

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("Ctrl-C: stopping after this step, with a checkpoint (Ctrl-C again stops at once)")

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def progress_bar(enabled: bool, total: int, start: int):
    """A rich progress bar with step, reward, pass rate and step time (no-op when disabled)."""
    if not enabled:
        return lambda *a: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prog = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"))
    task = prog.add_task("train", total=total, completed=start, info="")
    prog.start()

    def update(step, record, evals):
        if step is None:
            prog.stop()
            return
        info = (f"reward {record['reward']:.2f}  pass {record['pass_rate']:.2f}  "
                f"held-out {evals['mean']:.2f}  {record['step_seconds']:.1f}s/step")
        prog.update(task, completed=step, info=info)

    return update
