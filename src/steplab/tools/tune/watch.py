"""What the person running `steplab tune` sees: a bar over the trials with an ETA and one line
per finished trial, in steplab's words rather than Optuna's log (which is kept at WARNING).

    tune [3/20] trial 2: 2.4612  lr=3.2e-03 name=adamw  0:41  best 2.4612 (trial 2)  ETA 6:10
    tune [4/20] trial 3: pruned at step 50 (2.9104)  lr=1.1e-04 name=adam  0:12  ...
    tune trial 4: failed (ValueError: ...)

The watcher reads the study's trials, so it works the same for one worker (called after each
trial) and for many (the parent process polls while the workers run).
"""

from __future__ import annotations

from typing import Any

from steplab.progress import ProgressView, fmt_duration
from steplab.tools.tune.space import optuna_module
from steplab.tools.tune.workers import tally


def fmt_params(params: dict[str, Any]) -> str:
    """``lr=3.2e-03 name=adamw``: each value by its field name."""
    parts = []
    for key, value in sorted(params.items()):
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.rpartition('.')[2]}={text}")
    return " ".join(parts)


def outcome(t: Any) -> str:
    """A finished trial in a few words: its value, or why it has none."""
    S = optuna_module().trial.TrialState
    attrs = t.user_attrs
    if t.state == S.COMPLETE:
        return f"{t.value:.4f}"
    if t.state == S.PRUNED:
        if attrs.get("status") == "diverged":
            return "diverged (pruned)"
        steps = sorted(t.intermediate_values)
        last = f" ({t.intermediate_values[steps[-1]]:.4f})" if steps else ""
        return f"pruned at step {steps[-1]}{last}" if steps else "pruned"
    failure = attrs.get("failure", attrs.get("status", "failed"))
    return f"failed ({failure})"


class TrialWatch:
    """Prints each trial once it finishes and moves the bar; `poll` is cheap to call often."""

    def __init__(self, target: int, *, enabled: bool, study: Any):
        self.target = target
        trials = study.get_trials(deepcopy=False)
        self.seen = {t.number for t in trials if t.state.is_finished()}
        done = min(tally(trials).done, target)
        self.view = ProgressView(target, "trials", enabled=enabled, label="tune", start=done)
        self.view.update(done, self._best(trials))

    def _best(self, trials: list[Any]) -> str:
        S = optuna_module().trial.TrialState
        done = [t for t in trials if t.state == S.COMPLETE and t.value is not None]
        if not done:
            return ""
        best = min(done, key=lambda t: t.value)
        return f"best {best.value:.4f} (trial {best.number})"

    def poll(self, study: Any, *_: Any) -> None:
        """Lines for the trials finished since the last call (usable as an Optuna callback)."""
        S = optuna_module().trial.TrialState
        trials = study.get_trials(deepcopy=False)
        done = min(tally(trials).done, self.target)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        new = sorted((t for t in new if t.user_attrs.get("failure") != "surplus"), key=lambda t: t.number)
        count = done - sum(t.state in (S.COMPLETE, S.PRUNED) for t in new)
        for t in new:
            self.seen.add(t.number)
            best = self._best([u for u in trials if u.number in self.seen])  # best so far
            took = ""
            if t.datetime_start and t.datetime_complete:
                took = "  " + fmt_duration((t.datetime_complete - t.datetime_start).total_seconds())
            counted = t.state in (S.COMPLETE, S.PRUNED)
            count += counted
            where = f"tune [{count}/{self.target}]" if counted else "tune"
            text = f"{where} trial {t.number}: {outcome(t)}  {fmt_params(t.params)}{took}"
            self.view.line(f"{text}  {best}  {self.view.eta(count)}".rstrip())
        self.view.update(done, self._best(trials))

    def close(self) -> None:
        self.view.close()
