"""The babysitting checklist: the checks (:mod:`.checks`, usable on any compiled Keras model) and
``python cli.py check`` that runs them on a recipe (:mod:`.checklist`)."""
