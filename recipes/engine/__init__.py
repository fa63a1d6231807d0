"""The engine that runs any recipe: the training set-up (:mod:`.training`), the run in phases
(:mod:`.run`), checkpoints and resume (:mod:`.checkpoint`), time budgets (:mod:`.budget`), the final
evaluation (:mod:`.evaluate`), compute accounting (:mod:`.compute`), progress output (:mod:`.progress`),
the run directory (:mod:`.run_dir`), atomic writes (:mod:`.atomic`) and curves (:mod:`.plots`)."""
