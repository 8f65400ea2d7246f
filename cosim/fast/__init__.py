"""The fast path: numba kernels computing :mod:`cosim.model`'s numbers loop by loop.

Two unrelated users, one module each:

* :mod:`cosim.fast.step`: the batch environment's step (:class:`cosim.env.BatchCoSim`): the action
  projection, the slot, and at the start of the next slot the channel and the twin's observation;
* :mod:`cosim.fast.objective`: the per-slot optimiser's objective (dpp-opt, :mod:`cosim.optimizer`),
  its hand-derived gradient and its compiled (L-)BFGS loop.

:mod:`cosim.fast.records` holds what both pass their kernels: the model's scalar parameters as one
named record (:class:`~cosim.fast.records.Params`) instead of index constants into a vector.
:mod:`cosim.model` stays the readable reference; ``tests/test_fused.py`` and
``tests/test_optimizer_fast.py`` check that both agree within 1e-9.

It is used automatically when numba is installed (``pip install dtcosim[fast]``) and never
otherwise. Kernels are compiled once and cached on disk (``cache=True``), so only the very first
start pays the compilation.
"""

from .records import AVAILABLE, Params, params_of

__all__ = ["AVAILABLE", "Params", "params_of"]
