"""twin.view = global: the twin's per-RSU view of the other CVs."""

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
            want_cycles = sum(cycles[e, j] for j in mates) / OTHERS_SCALE
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


def test_twin_hide_zeroes_only_the_named_blocks_for_the_actor():
    with _sim(**{"twin.view": "global", "scenario.n_cvs": 6}) as full, \
            _sim(**{"twin.view": "global", "scenario.n_cvs": 6, "twin.hide": "[dt_others_cycles,dt_backlog]"}) as cut:
        obs, state = full.reset(7)
        obs_h, state_h = cut.reset(7)
        sl = full.layout.slices()
        for name in ("dt_others_cycles", "dt_backlog"):
            assert not obs_h[..., sl[name]].any()
        assert obs[..., sl["dt_others_cycles"]].any()
        rest = np.ones(full.layout.dim, bool)
        rest[sl["dt_others_cycles"]] = rest[sl["dt_backlog"]] = False
        np.testing.assert_array_equal(obs_h[..., rest], obs[..., rest])
        np.testing.assert_array_equal(state_h, state)  # the critic still sees everything


def test_twin_hide_names_a_block_of_the_view_or_fails_in_one_line():
    with pytest.raises(ConfigError, match="twin.hide: 'dt_others' is not a twin block of twin.view=paper"):
        _sim(**{"twin.hide": "[dt_others]"})
    with pytest.raises(ConfigError, match=r"twin.hide\[0\]: 'speed' is not one of dt_backlog"):
        load_config(overrides=["twin.hide=[speed]"])


def test_twin_hide_choices_are_the_twins_blocks():
    import dataclasses
    from cosim.config import TwinConfig
    from cosim.twin import TWIN_BLOCKS
    field = {f.name: f for f in dataclasses.fields(TwinConfig)}["hide"]
    assert field.metadata["choices"] == TWIN_BLOCKS


def test_set_actor_reads_the_global_view_as_rsu_tokens(tmp_path):
    """The global view's per-RSU blocks are more features of every RSU token; a policy file trained on it
    runs on any fleet and RSU count, and refuses a paper-view environment in one line."""
    import torch

    from agents import make_trainer
    from agents.checkpoint import load_policy, save_policy
    from agents.entity import SetActor
    from cosim.config import CosimError
    from cosim.twin import VIEWS, ObsLayout
    cfg = load_config(overrides=["twin.view=global", "training.arch=set", "training.n_envs=2", "training.hidden=16",
                                 "training.episodes=2", "scenario.episode_slots=4"])
    tr = make_trainer("ly-dtmppo", cfg)
    assert tr.actor_net.token_dim == 9 and tr.actor_net.blocks == VIEWS["global"]
    tr.iterate(0)
    spec, tensors = tr.actor(tr.state_dict())
    path = save_policy(tmp_path / "policy.safetensors", spec, tensors, "ly-dtmppo", tr.resolved_config(), 2)
    tr.sim.close()
    for n_cvs, rsus in ((3, None), (7, "[{x: 150, y: 0, radius: 200}, {x: 350, y: 0, radius: 200}]")):
        over = ["twin.view=global", f"scenario.n_cvs={n_cvs}"] + ([f"scenario.rsus={rsus}"] if rsus else [])
        with BatchCoSim(load_config(overrides=over), n_envs=2, seed=1) as sim:
            obs, _ = sim.reset(1)
            pol = load_policy(path, env=sim)
            assert pol.act(obs).shape == (2, n_cvs, sim.action_dim)
    with BatchCoSim(load_config(), n_envs=1, seed=1) as sim, pytest.raises(CosimError, match="reads RSU tokens"):
        load_policy(path, env=sim)
    # The actor is equivariant to the order of the RSUs, global blocks included.
    actor = SetActor(VIEWS["global"], 16)
    lay = ObsLayout(4, VIEWS["global"])
    x = torch.randn(2, 3, lay.dim)
    perm = torch.tensor([2, 0, 3, 1])
    xp = x.clone()
    for b in lay.token_blocks:
        sl = lay[b.name]
        xp[..., sl] = x[..., sl][..., perm]
    from cosim.model import ActionLayout
    act = ActionLayout(4)
    out, outp = actor(x), actor(xp)
    for block in (act.split_rsu, act.bandwidth_rsu, act.cpu):
        torch.testing.assert_close(outp[..., block], out[..., block][..., perm])
