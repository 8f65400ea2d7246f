"""Config loading: defaults, overrides, and one-line errors for bad input."""

import pytest

from cosim.config import ConfigError, from_dict, load_config, parse_overrides, save_config, to_dict


def test_defaults_hold_the_spec_table(cfg):
    assert cfg.scenario.n_cvs == 5 and len(cfg.scenario.rsus) == 3
    assert [r.x for r in cfg.scenario.rsus] == [200.0, 350.0, 500.0]
    assert cfg.scenario.rsus[0].y == 9.375 and cfg.scenario.rsus[0].height == 10.0
    assert cfg.channel.bandwidth_hz == 20e6 and cfg.channel.noise_w == 1e-13
    assert cfg.compute.rsu_cpu_hz == 20e9 and cfg.compute.twin_reserve_hz == 1e9
    assert cfg.tasks.size_bits == (1e6, 3e6) and cfg.tasks.intensity_cycles_per_bit == (1500.0, 2000.0)
    assert cfg.lyapunov.V == 5.0 and cfg.lyapunov.alpha == 0.6 and cfg.lyapunov.little_window == 10
    assert cfg.training.lr == 8e-5 and cfg.training.episodes == 1800 and cfg.training.batch_size == 512


def test_overrides_and_files_layer_in_order(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("lyapunov:\n  V: 50\nscenario:\n  n_cvs: 3\n")
    cfg = load_config([f], ["lyapunov.V=10", "twin.enabled=false"])
    assert cfg.lyapunov.V == 10.0 and cfg.scenario.n_cvs == 3 and cfg.twin.enabled is False
    assert cfg.lyapunov.alpha == 0.6  # untouched keys keep their defaults


def test_round_trip_through_yaml(tmp_path, cfg):
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config([tmp_path / "c.yaml"]) == cfg
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("lyapunov.V=-1", "lyapunov.V: -1.0 is out of range [0, 1e+06]"),
    ("lyapunov.foo=1", "unknown config key 'lyapunov.foo'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("scenario.boundary=loop", "scenario.boundary: 'loop' is not one of wrap, uturn"),
    ("scenario.n_cvs=2.5", "scenario.n_cvs: expected an integer, got 2.5"),
    ("tasks.size_bits=[3e6, 1e6]", "tasks.size_bits: lower bound 3000000.0 exceeds upper bound 1000000.0"),
    ("twin.enabled=maybe", "twin.enabled: expected true or false, got 'maybe'"),
    ("lyapunov.alpha=abc", "lyapunov.alpha: expected a number, got 'abc'"),
    ("compute.twin_reserve_hz=3e10", "compute.twin_reserve_hz: 3e+10 leaves no RSU capacity"),
    ("scenario.rsus=[{x: 1, y: 2, hieght: 3}]", "unknown config key 'scenario.rsus[0].hieght'"),
    ("backend=carla", "backend: unknown backend 'carla' (choose analytic, sumo"),
    ("lyapunov.V", "override 'lyapunov.V' is not of the form section.key=value"),
])
def test_bad_values_fail_with_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    text = str(err.value)
    assert message in text and "\n" not in text


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lyapunov: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([bad])


def test_parse_overrides_types():
    assert parse_overrides(["a.b=1", "a.c=true", "d=x"]) == {"a": {"b": 1, "c": True}, "d": "x"}


def test_training_extra_sections_come_from_the_algorithms(monkeypatch):
    """A section is known once an algorithm registers it (cosim/config.py lists none); a misspelt one is
    refused in one line naming the known ones."""
    import agents  # noqa: F401 - registers the learners' sections
    from cosim import extra_sections
    monkeypatch.setitem(extra_sections._REGISTERED, "my_algo", "test")
    cfg = load_config(overrides=["training.extra.my_algo.rate=0.5"])
    assert cfg.training.extra["my_algo"] == {"rate": 0.5}
    with pytest.raises(ConfigError, match=r"^unknown config key 'training.extra.my_algoo' \(allowed in "
                                          r"training.extra: mappo, .*my_algo, dpp_opt\)$"):
        load_config(overrides=["training.extra.my_algoo.rate=0.5"])


def test_the_simulation_alone_loads_a_run_config_without_the_learners():
    """Without agents imported, the learners' sections are kept as they are (the simulation never reads
    them), and loading a config imports no learner."""
    import subprocess
    import sys
    prog = ("import sys\nfrom cosim.config import load_config\n"
            "cfg = load_config(overrides=['training.extra.mappo.obs_norm=true'])\n"
            "assert cfg.training.extra == {'mappo': {'obs_norm': True}}\n"
            "assert not any(m == 'agents' or m.startswith('agents.') for m in sys.modules), 'agents imported'\n")
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
