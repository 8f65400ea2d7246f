"""Hypothesis draws shared by the property tests of the model (test_model.py, test_actions.py), and test maps."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays


def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def random_slot(data, n_envs: int = 2, n_cvs: int = 3, raw_bound: float = 1e6, n_rsus: int = 3):
    """A random slot on the default road: positions (x, y), fades, raw actions (finite up to
    ``raw_bound``, or NaN/inf), active flags and a seed for the task draws."""
    shape = (n_envs, n_cvs)
    x = data.draw(arrays(float, shape, elements=floats(-100, 800)))
    y = data.draw(arrays(float, shape, elements=floats(-10, 10)))
    fading = data.draw(arrays(float, shape + (n_rsus,), elements=floats(0, 20)))
    raw = data.draw(arrays(float, shape + (3 * n_rsus + 2,), elements=st.one_of(
        floats(-raw_bound, raw_bound), st.sampled_from([np.nan, np.inf, -np.inf]))))
    active = data.draw(arrays(bool, shape))
    seed = data.draw(st.integers(0, 2**31 - 1))
    return x, y, fading, raw, active, seed


def busy_queues(sim, seed: int) -> tuple[np.ndarray, np.random.Generator]:
    """Fill the first environment's queues and Little's-law windows with random backlogs at t = 7 (an
    optimiser's slot is hardest then); returns active flags with CV 1 inactive and the generator, to
    draw the rest of the slot from."""
    rng = np.random.default_rng(seed)
    p, q = sim.params, sim.queues
    q.q_loc[:] = rng.uniform(0, 2, q.q_loc.shape) * p.W_ref
    q.q_rsu[:] = rng.uniform(0, 3, q.q_rsu.shape) * p.W_ref
    q.energy[:] = rng.uniform(0, 2, q.energy.shape) * p.E_ref
    for h in (q.hist_q_loc, q.hist_lam_loc, q.hist_q_rsu, q.hist_lam_rsu):
        h[:] = rng.uniform(0, 2, h.shape) * p.W_ref
    q.t = 7
    active = sim.mob.active.copy()
    active[0, 1] = False  # an inactive CV
    return active, rng


def netgenerate(folder, name: str, *args: str):
    """A fresh netgenerate network ``folder/name`` (a pathlib.Path) from the SUMO of the eclipse-sumo wheel."""
    import os
    import subprocess
    from pathlib import Path

    import sumo
    net = Path(folder) / name
    subprocess.run([os.path.join(sumo.SUMO_HOME, "bin", "netgenerate"), *args, "--output-file", str(net)],
                   check=True, capture_output=True, env=dict(os.environ, SUMO_HOME=sumo.SUMO_HOME))
    return net
