"""Twin fidelity and information: twin.hide on both paths, the additive sync error, staleness
that carries across episodes, and twin.info (oracle | reported | previous)."""

from __future__ import annotations

import numpy as np
import pytest

from cosim import fast
from cosim import model as M
from cosim.config import ConfigError, load_config
from cosim.env import BatchCoSim
from cosim.twin import GLOBAL_NAMES, VIEWS

PATHS = [True, False] if fast.AVAILABLE else [False]
# A quarter of the RSU compute, so that the RSU backlogs (the twin's backlog blocks) are not all zero.
BUSY = {"compute.rsu_cpu_hz": 2.5e9, "scenario.n_cvs": 6}


def _sim(fused: bool, n_envs: int = 3, seed: int = 4, **overrides) -> BatchCoSim:
    cfg = load_config(overrides=[f"{k}={v}" for k, v in {**BUSY, **overrides}.items()])
    sim = BatchCoSim(cfg, n_envs=n_envs, seed=seed)
    sim.fused = fused
    return sim


def _play(sim: BatchCoSim, slots: int, seed: int = 11, action_seed: int = 0):
    """Observations, states and step outputs over ``slots`` slots of fixed random actions (independent
    of the observation, so that every variant takes the same decisions)."""
    acts = np.random.default_rng(action_seed).normal(0.0, 3.0, (slots, sim.n_envs, sim.n_cvs, sim.action_dim))
    obs, state = sim.reset(seed)
    o, s, outs = [obs], [state], []
    for t in range(slots):
        out = sim.step(acts[t])
        o.append(out.obs)
        s.append(out.state)
        outs.append(out)
    return np.stack(o), np.stack(s), outs


def _twin_names(view: str) -> list[str]:
    return [b.name for b in VIEWS[view] if b.twin]


@pytest.mark.parametrize("view", ["paper", "global"])
def test_twin_hide_each_block_on_both_paths(view):
    """Each twin block hidden in turn: the actor sees exactly zeros there on the numba and the numpy path
    alike, exactly what it sees without hide elsewhere, and the critic's state is unchanged."""
    names = _twin_names(view)
    full = {f: _play(_sim(f, **{"twin.view": view}), 8) for f in PATHS}
    for name in names:
        runs = {}
        for f in PATHS:
            sim = _sim(f, **{"twin.view": view, "twin.hide": f"[{name}]"})
            if f:  # the numba observation is the one tested: the kernel writes this view's blocks
                assert [n for n, _ in sim.layout._blocks()] == [n for n in sim.layout.slices()]
                assert sim._fused_obs[0].dim == sim.layout.dim
            runs[f] = _play(sim, 8)
        sl = sim.layout[name]
        rest = np.ones(sim.layout.dim, bool)
        rest[sl] = False
        for f, (obs, state, _) in runs.items():
            assert not obs[..., sl].any(), (name, f)
            ref_obs, ref_state, _ = full[f]
            assert ref_obs[..., sl].any(), name  # there was something to hide
            np.testing.assert_array_equal(obs[..., rest], ref_obs[..., rest])
            np.testing.assert_array_equal(state, ref_state)
        if len(PATHS) == 2:
            np.testing.assert_array_equal(runs[True][0], runs[False][0])


@pytest.mark.parametrize("view", ["paper", "global"])
def test_additive_sync_error_shows_an_empty_queue_as_noise(view):
    """Multiplicative noise leaves an empty queue at exactly 0; additive noise (in the observation's
    units) does not, and both paths draw the same noise."""
    seen = {}
    for kind in ("multiplicative", "additive"):
        for f in PATHS:
            sim = _sim(f, **{"twin.view": view, "twin.sync_error": 0.05, "twin.sync_error_kind": kind})
            obs, state = sim.reset(11)
            seen[kind, f] = obs, state.reshape(obs.shape)
    lay = sim.layout
    dt, backlog = lay.dt_slice, lay["dt_backlog"]
    for f in PATHS:
        obs_m, true = seen["multiplicative", f]
        obs_a, _ = seen["additive", f]
        assert not true[..., backlog].any()          # slot 0: the RSU queues are empty ...
        assert not obs_m[..., backlog].any()         # ... and multiplicative noise keeps them at 0
        noise = (obs_a[..., dt] - true[..., dt]).astype(float)
        assert 0.04 < noise.std() < 0.06 and abs(noise.mean()) < 0.01
        np.testing.assert_array_equal(obs_a[..., : dt.start], true[..., : dt.start])
    if len(PATHS) == 2:
        for kind in ("multiplicative", "additive"):
            np.testing.assert_array_equal(seen[kind, True][0], seen[kind, False][0])
    with pytest.raises(ConfigError, match="sync_error_kind"):
        load_config(overrides=["twin.sync_error_kind=relative"])


@pytest.mark.parametrize("fused", PATHS)
def test_staleness_carries_across_episodes_when_asked(fused):
    """staleness 2: an episode's first slot shows what the twin held two slots before; without the carry
    that is the fresh first slot, with it the previous episode's slot L - 1 (its observation at L is the
    last it recorded)."""
    L = 5
    seen_first = {}
    for carry in (False, True):
        sim = _sim(fused, **{"twin.staleness": 2, "twin.staleness_carry": carry, "scenario.episode_slots": L})
        _, states, _ = _play(sim, L)
        obs2, state2 = sim.reset(12)
        dt = sim.layout.dt_slice
        true1 = states.reshape(states.shape[:2] + obs2.shape[1:])[..., dt]  # episode 1, slots 0..L
        true2 = state2.reshape(obs2.shape)[..., dt]
        seen_first[carry] = obs2[..., dt]
        if carry:
            np.testing.assert_array_equal(obs2[..., dt], true1[L - 1])
        else:
            np.testing.assert_array_equal(obs2[..., dt], true2)
    assert not np.array_equal(seen_first[True], seen_first[False])


def test_report_cost_is_the_descriptor_over_the_best_previous_link():
    """The worked number: 8000 bits at Theta B se = 1.5 x 20 MHz x 10 bit/s/Hz = 3e8 bit/s take 26.67 us
    and, at 1 W, 26.67 uJ; the best *covered* link counts, an uncovered CV pays nothing."""
    p = M.ModelParams.from_config(load_config())
    assert (p.sensing_gain, p.bandwidth, p.tx_power) == (1.5, 20e6, 1.0)
    se = np.array([[[10.0, 30.0, 3.0], [4.0, 5.0, 6.0]]])
    covered = np.array([[[True, False, True], [False, False, False]]])
    delay, energy = M.report_cost(p, 8000.0, se, covered)
    np.testing.assert_allclose(delay, [[8000.0 / 3e8, 0.0]], rtol=1e-15)
    assert delay[0, 0] == pytest.approx(26.6667e-6, rel=1e-5)
    np.testing.assert_allclose(energy, delay * 1.0, rtol=1e-15)


@pytest.mark.parametrize("fused", PATHS)
def test_reported_info_charges_each_report_in_the_slot(fused):
    """twin.info: reported adds each CV's report, at the previous slot's spectral efficiency (its first
    slot: the current one), to its task's delay and energy, and nothing else changes: the same
    decisions, the same observation apart from the energy queue the report feeds."""
    slots, bits = 6, 2.0e5  # a large report, so that its cost is well above rounding
    o_or, _, out_or = _play(_sim(False, **{"twin.view": "global"}), slots)
    rep = _sim(fused, **{"twin.view": "global", "twin.info": "reported", "twin.report_bits": bits})
    o_rep, _, out_rep = _play(rep, slots)
    ref = _sim(False, **{"twin.view": "global"})
    ref.reset(11)
    spec_eff, covered = [ref.spec_eff], [ref.covered]  # slot t's channel, the same stream as both runs
    acts = np.random.default_rng(0).normal(0.0, 3.0, (slots, ref.n_envs, ref.n_cvs, ref.action_dim))
    for t in range(slots - 1):
        ref.step(acts[t])
        spec_eff.append(ref.spec_eff)
        covered.append(ref.covered)
    for t in range(slots):
        se = spec_eff[t - 1] if t > 0 else spec_eff[0]
        best = np.where(covered[t], se, 0.0).max(-1)
        want = np.where(covered[t].any(-1), bits / (1.5 * 20e6 * best), 0.0)
        a, b = out_rep[t].result, out_or[t].result
        np.testing.assert_allclose(a.delay - b.delay, want, rtol=1e-7, atol=1e-15)
        np.testing.assert_allclose(a.energy - b.energy, want * 1.0, rtol=1e-7, atol=1e-15)
        np.testing.assert_array_equal(out_rep[t].decision.split, out_or[t].decision.split)
        assert (want > 0).any()
    q = rep.layout["queues"]
    same = np.ones(rep.layout.dim, bool)
    same[q] = False
    np.testing.assert_allclose(o_rep[..., same], o_or[..., same], rtol=1e-6, atol=1e-7)
    # Ly-MAPPO has no global view to wait for: it pays nothing.
    off = _sim(fused, **{"twin.view": "global", "twin.info": "reported", "twin.enabled": "false"})
    assert not off.twin.charges_reports
    off.reset(1)
    assert off.report is None


@pytest.mark.parametrize("fused", PATHS)
def test_previous_info_lags_the_global_view_by_one_slot(fused):
    slots = 6
    o_or, s_or, _ = _play(_sim(fused, **{"twin.view": "global"}), slots)
    prev = _sim(fused, **{"twin.view": "global", "twin.info": "previous"})
    o_pr, s_pr, _ = _play(prev, slots)
    lay = prev.layout
    glob = np.zeros(lay.dim, bool)
    for name in GLOBAL_NAMES:
        glob[lay[name]] = True
    assert not o_pr[0][..., glob].any()                                 # nothing reported before slot 0
    np.testing.assert_array_equal(o_pr[1:][..., glob], o_or[:-1][..., glob])  # slot t shows slot t - 1
    assert not np.array_equal(o_pr[1:][..., glob], o_or[1:][..., glob])
    np.testing.assert_array_equal(o_pr[..., ~glob], o_or[..., ~glob])
    np.testing.assert_array_equal(s_pr, s_or)                           # the critic: current and true


def test_info_needs_the_global_view():
    with pytest.raises(ConfigError, match="twin.info: previous .* needs twin.view: global"):
        _sim(False, **{"twin.info": "previous"})
    with pytest.raises(ConfigError, match=r"twin.info: 'later' is not one of"):
        load_config(overrides=["twin.info=later"])


def test_a_policy_runs_under_the_info_model_it_was_trained_with():
    from agents.checkpoint import config_for_policy, policy_options
    meta = {"config": {"twin": {"view": "global", "info": "previous"}}}
    assert policy_options(meta)["twin.info"] == "previous"
    assert policy_options({"config": {}})["twin.info"] == "oracle"  # older files: the oracle they had
    cfg = config_for_policy(load_config(), meta)
    assert (cfg.twin.view, cfg.twin.info) == ("global", "previous")
    assert config_for_policy(load_config(), meta, explicit={"twin.info"}).twin.info == "oracle"


def test_v_sweep_script_writes_its_table_and_figure(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "scripts/v_sweep.py", "--values", "1", "20", "--slots", "6", "--set",
                        "scenario.n_cvs=2", "--out", str(tmp_path), "--quiet"], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "v_sweep.json").read_text())["rows"]
    assert [(r["V"], r["policy"]) for r in rows] == [(1.0, "dpp-opt"), (20.0, "dpp-opt")]
    assert (tmp_path / "fig_v_sweep.png").stat().st_size > 0
    assert "| 20 | dpp-opt |" in (tmp_path / "v_sweep.md").read_text()
    bad = subprocess.run([sys.executable, "scripts/v_sweep.py", "--learner", "x"], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "V=PATH" in bad.stderr
