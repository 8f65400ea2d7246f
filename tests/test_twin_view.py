"""twin.view = global: the twin's per-RSU view of the other CVs (issue 12, item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from cosim.config import ConfigError, load_config
from cosim.env import BatchCoSim
from cosim.twin import GLOBAL_BLOCKS, OTHERS_SCALE, SPEC_EFF_SCALE


def _sim(**overrides):
    cfg = load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])
    return BatchCoSim(cfg, n_envs=3, seed=4)


def test_global_view_counts_the_others_each_rsu_covers():
    with _sim(**{"twin.view": "global", "scenario.n_cvs": 6}) as sim:
        obs, _ = sim.reset(7)
        lay, p = sim.layout, sim.params
        assert lay.dim == 34 + 3 * sim.n_rsus  # the paper's 34 entries and three per-RSU blocks more
        cov = sim.covered & sim.mob.active[..., None]
        others = cov.sum(axis=1, keepdims=True) - cov
        np.testing.assert_allclose(obs[..., lay["dt_others"]], (others / OTHERS_SCALE).astype(np.float32))
        cycles = sim.tasks.size * sim.tasks.intensity / p.W_ref
        for e, i, k in np.ndindex(cov.shape):
            mates = [j for j in range(sim.n_cvs) if j != i and cov[e, j, k]]
            want_cycles = sum(cycles[e, j] for j in mates)
            want_se = np.mean([sim.spec_eff[e, j, k] for j in mates]) / SPEC_EFF_SCALE if mates else 0.0
            assert obs[e, i, lay["dt_others_cycles"]][k] == pytest.approx(want_cycles, rel=1e-5, abs=1e-6)
            assert obs[e, i, lay["dt_others_spec_eff"]][k] == pytest.approx(want_se, rel=1e-5, abs=1e-6)
        # The paper's blocks are where they were, so reference policies read them by the same name.
        paper = _sim(**{"scenario.n_cvs": 6})
        paper_obs, _ = paper.reset(7)
        np.testing.assert_array_equal(obs[..., : paper.layout.dim], paper_obs)
        paper.close()


def test_global_view_is_part_of_the_dt_part():
    with _sim(**{"twin.view": "global", "twin.enabled": "false"}) as off:
        obs, state = off.reset(3)
        lay = off.layout
        assert all(lay.slices()[b.name].start >= lay.dt_slice.start for b in GLOBAL_BLOCKS)
        assert not obs[..., lay.dt_slice].any()                    # Ly-MAPPO: zeros
        per_agent = state.reshape(obs.shape)
        assert per_agent[..., lay["dt_others"]].any()              # the critic's state keeps the truth


def test_set_actor_refuses_the_global_view_in_one_line():
    from agents import make_trainer
    cfg = load_config(overrides=["twin.view=global", "training.arch=set", "training.n_envs=2"])
    with pytest.raises(ConfigError, match="twin.view: global is available with training.arch=mlp only"):
        make_trainer("ly-dtmppo", cfg)
