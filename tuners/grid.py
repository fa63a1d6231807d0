"""Grid search that survives being interrupted (keras-tuner#1055).

keras-tuner's ``GridSearchOracle`` keeps the order of its trials in a linked list and a queue that it does
not save with the rest of its state. Reloaded after an interruption it has neither, and the first trial to
end raises ``KeyError`` when the oracle looks up its successor. This oracle saves both and rebuilds them.
"""

from __future__ import annotations

import keras_tuner as kt
from keras_tuner.src.tuners.gridsearch import LinkedList


def _ordered(linked: LinkedList) -> list[str]:
    ids, index = [], linked._next_index[None]  # the head hangs off the None key
    while index is not None:
        ids.append(linked._memory[index])
        index = linked._next_index[index]
    return ids


class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
    def get_state(self) -> dict:
        state = super().get_state()
        state["ordered_ids"] = _ordered(self._ordered_ids)
        state["populate_next"] = list(self._populate_next)
        return state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self._ordered_ids = LinkedList()
        for trial_id in state.get("ordered_ids", []):
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(state.get("populate_next", []))


class ResumableGridSearch(kt.Tuner):
    """``keras_tuner.GridSearch`` with :class:`ResumableGridSearchOracle`."""

    def __init__(
        self,
        hypermodel=None,
        objective=None,
        max_trials=None,
        seed=None,
        hyperparameters=None,
        tune_new_entries=True,
        allow_new_entries=True,
        max_retries_per_trial=0,
        max_consecutive_failed_trials=3,
        **kwargs,
    ):
        oracle = ResumableGridSearchOracle(
            objective=objective,
            max_trials=max_trials,
            seed=seed,
            hyperparameters=hyperparameters,
            tune_new_entries=tune_new_entries,
            allow_new_entries=allow_new_entries,
            max_retries_per_trial=max_retries_per_trial,
            max_consecutive_failed_trials=max_consecutive_failed_trials,
        )
        super().__init__(oracle, hypermodel, **kwargs)
