"""The driver ↔ trial channel of the Ray backend: stops, pruning and live results.

* :func:`start_stop_board` — one small actor per launch that the driver writes stop requests to:
  *all trials* (SIGINT/SIGTERM to the driver, ``jobs.sweep cancel``) or *one trial* (pruned by the
  scheduler). A trial learns of it through :class:`BoardWatch`, a thread long-polling the board, so
  the training loop's stop check (before every step) costs nothing and a stop is honoured within one
  step, after a checkpoint (:class:`jobs.attempt.StopRequest`).
* :class:`TuneReporter` — every validation becomes a Tune result (``val_bpd`` bits/dim,
  ``val_epoch``, ``step``, ``samples_seen``), so schedulers, ``ResultGrid`` and Tune's loggers see
  the curve; MLflow stays the record of truth.
* :func:`list_searcher` — proposes a sweep's planned trials to Tune one by one, each with its own
  config (``index``, ``trial_id`` and its axis values), so Tune's own tools see the hyperparameters.
* :class:`BoardScheduler` — wraps Tune's ASHA / asynchronous HyperBand (one per ``group_by``
  value; rungs in epochs, or in images seen with ``tune.scheduler.grace_images``) and turns their STOP decisions into prune requests on the board: the trial then checkpoints
  and ends FINISHED with ``rgflow.state=pruned`` instead of being torn down mid-step by Tune.
  Decisions at a trial's last validation are ignored (it ends anyway, as finished).
"""
from __future__ import annotations

import json
import threading
from typing import Any

from jobs.attempt import StopRequest

#: Seconds a trial's watch thread waits on the board per call (it stops within this after its trial).
WATCH_POLL_S = 5.0
#: images: ASHA's ``max_t`` with rungs in images seen — no cap (every trial ends at its own budget; rungs past
#: the longest trial are never reached).
NO_IMAGE_CAP = 10 ** 15


def start_stop_board():
    """A new stop board actor (0 CPUs) in the connected Ray; returns its handle."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class StopBoard:
        """``stop_all(state, reason)`` for every trial; ``prune(trial_id, reason)`` for one;
        ``wait(trial_id, timeout_s)`` returns ``(state, reason)`` as soon as one applies, or None."""

        def __init__(self):
            self.everyone: tuple[str, str] | None = None
            self.one: dict[str, tuple[str, str]] = {}
            self.changed = asyncio.Event()

        def _get(self, trial_id: str) -> tuple[str, str] | None:
            return self.one.get(trial_id) or self.everyone

        async def stop_all(self, state: str, reason: str) -> None:
            self.everyone = self.everyone or (state, reason)
            self.changed.set()

        async def prune(self, trial_id: str, reason: str) -> None:
            self.one.setdefault(trial_id, ("pruned", reason))
            self.changed.set()

        async def get(self, trial_id: str) -> tuple[str, str] | None:
            return self._get(trial_id)

        async def wait(self, trial_id: str, timeout_s: float) -> tuple[str, str] | None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while self._get(trial_id) is None and loop.time() < deadline:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            return self._get(trial_id)

    return StopBoard.remote()


class BoardWatch:
    """In a trial's worker: a daemon thread waiting on the board for this trial's stop request.
    Call it (the ``stop_flag`` of :func:`jobs.attempt.execute`) for the request or None; ``close()``
    when the attempt is over. A board that is gone (the driver died) ends the thread quietly."""

    def __init__(self, board, trial_id: str):
        self.board, self.trial_id = board, trial_id
        self.request: StopRequest | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"stop-watch-{trial_id}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import ray

        while not self._closed.is_set() and self.request is None:
            try:
                found = ray.get(self.board.wait.remote(self.trial_id, WATCH_POLL_S))
            except Exception:  # noqa: BLE001 - the board (driver) is gone: Ray ends this worker too
                return
            if found:
                self.request = StopRequest(*found)

    def __call__(self) -> StopRequest | None:
        return self.request

    def close(self) -> None:
        self._closed.set()


class TuneReporter:
    """``on_validation(step, metrics)`` of one trial: a Tune result per validation. If Tune stops
    the trial itself (``tune.report`` raises SystemExit: its actor is being torn down), reporting
    stops and :attr:`stopped` asks the attempt to stop as killed."""

    def __init__(self, batch_size: int, epochs: float):
        self.batch_size, self.epochs = batch_size, epochs
        self.stopped: StopRequest | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from ray import tune

        if self.stopped is not None:
            return
        result = {"val_bpd": float(metrics["val_bpd"]), "val_epoch": float(metrics["val_epoch"]), "step": int(step),
                  "samples_seen": int(step) * self.batch_size, "epochs": float(self.epochs)}
        if "val_bpd_se" in metrics:
            result["val_bpd_se"] = float(metrics["val_bpd_se"])
        try:
            tune.report(result)
        except SystemExit:
            self.stopped = StopRequest("killed", "stopped by Ray Tune")


def make_scheduler(settings, board, identify, max_epochs: float):
    """The Tune scheduler of a sweep's ``tune.scheduler`` (:class:`jobs.sweep_spec.SchedulerSettings`):
    a :class:`BoardScheduler` over one ASHA/HyperBand per group. ``identify(tune_config)`` → the
    trial's id and its ``group_by`` values; ``max_epochs``: the budget cap when the settings leave it
    ``None``. With ``grace_images`` the rungs are in images seen (``samples_seen``), with no cap."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

    if settings.grace_images:
        time_attr, grace, cap = "samples_seen", settings.grace_images, NO_IMAGE_CAP
    else:
        time_attr, grace, cap = "val_epoch", settings.grace_epochs, settings.max_epochs or max_epochs

    def one() -> AsyncHyperBandScheduler:
        return AsyncHyperBandScheduler(
            time_attr=time_attr, metric="val_bpd", mode="min", max_t=cap, grace_period=grace,
            reduction_factor=settings.reduction_factor, brackets=1 if settings.kind == "asha" else settings.brackets)

    class BoardScheduler(FIFOScheduler):
        """Tune's ASHA/HyperBand per group; its STOP decisions become prune requests (see module doc)."""

        def __init__(self):
            super().__init__()
            self.inner: dict[tuple, AsyncHyperBandScheduler] = {}
            self.pruned: set[str] = set()

        def _of(self, trial) -> AsyncHyperBandScheduler:
            key = identify(trial.config)[1]
            if key not in self.inner:
                self.inner[key] = one()
            return self.inner[key]

        def set_search_properties(self, metric, mode, **spec) -> bool:
            return True  # the metric and mode are fixed: val_bpd, min

        def on_trial_add(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_add(tune_controller, trial)

        def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
            decision = self._of(trial).on_trial_result(tune_controller, trial, result)
            tid = identify(trial.config)[0]
            epoch, total = result.get("val_epoch"), result.get("epochs")
            if (decision == TrialScheduler.STOP and epoch is not None and total is not None
                    and epoch < total - 1e-9 and tid not in self.pruned):
                self.pruned.add(tid)
                seen = f", {result['samples_seen']:,} images" if settings.grace_images else ""
                board.prune.remote(tid, f"pruned by {settings.kind} at epoch {epoch:g} of {total:g}{seen} "
                                        f"(val_bpd {result['val_bpd']:.4f} behind its rung)")
            return TrialScheduler.CONTINUE

        def on_trial_complete(self, tune_controller, trial, result) -> None:
            self._of(trial).on_trial_complete(tune_controller, trial, result)

        def on_trial_error(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_error(tune_controller, trial)

        def on_trial_remove(self, tune_controller, trial) -> None:
            self._of(trial).on_trial_remove(tune_controller, trial)

        def debug_string(self) -> str:
            return f"{settings.kind} over {len(self.inner)} group(s), {len(self.pruned)} pruned"

    return BoardScheduler()


def optuna_space(params: dict[str, tuple[str, tuple]]) -> dict[str, Any]:
    """Optuna distributions of ``axes.random.params`` (key → (uniform|loguniform|choice, args))."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    space = {}
    for key, (dist, args) in params.items():
        space[key] = (CategoricalDistribution(list(args)) if dist == "choice"
                      else FloatDistribution(float(args[0]), float(args[1]), log=dist == "loguniform"))
    return space


def list_searcher(configs: list[dict[str, Any]]):
    """Tune search algorithm of a sweep without ``tune.searcher``: proposes ``configs`` (one Tune
    config per trial, in trial order), then finishes, so that each Tune trial's config holds its
    own values (a grid over an index would show Tune only the index)."""
    from ray.tune.search import Searcher

    class TrialList(Searcher):
        """The launch's trials, one per :meth:`suggest`; nothing to learn from their results."""

        def __init__(self):
            super().__init__(metric="val_bpd", mode="min")
            self.left = list(configs)

        def suggest(self, trial_id: str):
            return self.left.pop(0) if self.left else Searcher.FINISHED

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            """Nothing to do: the list is fixed."""

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: a re-launch plans its trials again (``jobs.sweep``)."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

    return TrialList()


def make_searcher(search, done: dict[int, list[tuple[dict, float | None, str]]], pending: dict[int, list[dict]],
                  on_sample):
    """Tune search algorithm of a sweep's ``tune.searcher`` (:class:`jobs.sweep_spec.Search`): one
    Optuna TPE study per frame (setting of the other axes), asked in turn until each has
    ``num_samples`` trials. ``done``: frame → (params, best val_bpd or None, state) of trials that
    will not run again, told to the study first; ``pending``: frame → params of recorded trials to
    resume, suggested before any new point. ``on_sample(frame, params) -> dict``: records a sample
    and returns the Tune config of its trial (``index``, ``trial_id``, its axis values and the rest)."""
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    space, n = optuna_space(search.params), search.settings.num_samples
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def key(params: dict) -> str:
        return json.dumps(params, sort_keys=True)

    class FrameSearcher(Searcher):
        """One OptunaSearch per frame, asked in turn (the frame with the most samples left first).
        A point equal to a done trial (the sampler's seeded start repeats itself after a re-launch)
        is answered with that trial's value and asked again, so no done trial is sampled twice."""

        def __init__(self):
            super().__init__(metric="val_bpd", mode="min")
            self.inner, self.left, self.frame_of, self.inner_id = [], [], {}, {}
            self.done = {f: {key(p): v for p, v, _ in trials} for f, trials in done.items()}
            for f in range(len(search.frames)):
                study = OptunaSearch(space=space, metric="val_bpd", mode="min", points_to_evaluate=pending.get(f) or None,
                                     sampler=optuna.samplers.TPESampler(seed=search.settings.seed + f))
                for params, value, state in done.get(f, []):
                    study.add_evaluated_point(params, value if value is not None else float("nan"),
                                              error=value is None, pruned=state == "pruned")
                self.inner.append(study)
                self.left.append(max(n - len(done.get(f, [])), 0))

        def suggest(self, trial_id: str):
            open_frames = [f for f, left in enumerate(self.left) if left > 0]
            if not open_frames:
                return Searcher.FINISHED
            frame = max(open_frames, key=lambda f: (self.left[f], -f))
            study, seen = self.inner[frame], self.done.get(frame, {})
            for attempt in range(1000):
                inner_id = f"{trial_id}~{attempt}"
                params = study.suggest(inner_id)
                if params is None or key(params) not in seen:
                    break
                value = seen[key(params)]
                study.on_trial_complete(inner_id, None if value is None else {"val_bpd": value}, error=value is None)
            if params is None:
                return None
            self.left[frame] -= 1
            self.frame_of[trial_id], self.inner_id[trial_id] = frame, inner_id
            return on_sample(frame, params)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self.frame_of and "val_epoch" in result:
                self.inner[self.frame_of[trial_id]].on_trial_result(self.inner_id[trial_id], result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self.frame_of:
                ok = result is not None and result.get("val_bpd") == result.get("val_bpd")  # not NaN
                self.inner[self.frame_of.pop(trial_id)].on_trial_complete(
                    self.inner_id.pop(trial_id), result if ok else None, error=error or not ok)

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: a re-launch rebuilds the studies from the search record and MLflow."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

    return FrameSearcher()
