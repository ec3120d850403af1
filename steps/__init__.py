"""California housing price pipeline: the MLflow Project's steps.

load_data → preprocess → train → register, chained by main.

Entry points (one per MLproject entry; each is a click command over a pure core):
``load_data``, ``preprocess``, ``train``, ``register``, ``main``, ``tune``, ``serve``,
``predict``.

Library modules (imported by entry points, never the other way round): ``config`` (names,
paths, defaults), ``hyperparams`` (model kinds and their defaults), ``schema`` (the raw
table's declared rules), ``features`` and ``models`` (the classes registered models are
made of: never rename or move them), ``lineage`` (upstream runs and their tags), ``report``
(the evaluation report), ``runtime`` (a step's MLflow run, errors, signals) and
``fingerprint`` (the code hash behind step reuse).
"""
