"""Optional hyperparameter search (Optuna) per model and outer fold: the ``tune`` stage.

``config.py`` (the ``tuning`` section), ``space.py`` (what is searched and how the best
values are applied to a model's config), ``search.py`` (``tune_model``).
"""
