"""What every fast-path kernel is given: the model's scalar parameters as one named record.

numba compiles a namedtuple's fields to plain values, so ``p.tau`` in a kernel costs what an index
into a vector costs, without index constants kept by hand.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import model as M

try:  # numba is an optional extra: everything here has a numpy reference in cosim.model
    import numba  # noqa: F401
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    AVAILABLE = False

    def njit(*args: Any, **kwargs: Any):  # type: ignore[no-redef]
        """Without numba the kernels are plain (slow) Python; nothing selects them then."""
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


EPS = M._EPS
LOGIT_CLIP = M._LOGIT_CLIP


class Params(NamedTuple):
    """The scalar fields of :class:`cosim.model.ModelParams` the kernels read (same names, SI units)."""

    sensing_gain: float
    bandwidth: float
    tx_power: float
    noise: float
    pathloss_db_1m: float
    pathloss_slope_db: float
    kappa_cv: float
    kappa_rsu: float
    rsu_capacity: float
    min_rsu_share: float
    tau: float
    V: float
    alpha: float
    energy_budget: float
    deadline_penalty: float
    min_bandwidth_share: float
    min_split_share: float
    T_ref: float
    E_ref: float
    W_ref: float
    window: float
    rsu_cpu: float


def params_of(p: M.ModelParams) -> Params:
    """The kernels' record of ``p``."""
    return Params(*(float(getattr(p, name)) for name in Params._fields))
