"""The study layer: what the notebooks call, one job per module.

* :mod:`.session` — profile name + overrides → :class:`~.session.Study` (settings, paths, seeds)
* :mod:`.training` — the checkpoints of both arms of each stage, trained if missing
* :mod:`.runs` — evaluation runs (checkpoint × read × dataset) and their folder cache
* :mod:`.tables` — tables of our numbers; each builder schedules the runs it needs
* :mod:`.paper` — the paper's published numbers, paper-beside-ours tables
* :mod:`.figures` — every figure (PNG) and the image helpers they share
* :mod:`.runner` — ``python -m kmnlib.study``: executes the notebooks with papermill, HTML, index

Analyses behind figures (read weights, loss maps) are in :mod:`kmnlib.analysis`.
"""
