"""The parts of ``benchmarks/gpu_check.py`` (the CUDA readiness check), one module a section.

``plan`` (sizes of a run), ``report`` (rows, table, JSON, time budgets), ``verdicts`` (pure
functions of recorded numbers), ``device`` (precision, synchronisation, memory of the device under
test), ``inputs`` (sequences and models the checks run on), ``environment`` (the machine's record),
and the sections ``device_section``, ``train_section``, ``inference_section``, ``ddp_section``.
The command line is ``benchmarks/gpu_check.py``.
"""
