"""Hardening, second round: never touch a user's files, survive SIGTERM and a frozen SUMO,
validate recorded traces. One test per class; the helpers are the first round's (tests/test_hardening.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cosim.config import CosimError, load_config

from test_hardening import ROOT, one_line

ANALYTIC = ("--backend", "analytic", "--policy", "equal", "--quiet")


def run(script, *args, timeout=300, cwd=ROOT, **kw):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


# ---------------------------------------------------------------------------
# Files the run did not write

def test_a_run_never_replaces_files_it_did_not_write(tmp_path):
    from cosim.outputs import MANIFEST, OutputDir, OutputError
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "slots.csv").write_text("my data")
    (mine / "config.yaml").write_text("my: config\n")
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", ".", cwd=mine),
             "--out .: ./config.yaml was not written by a run of dtcosim; refusing to replace it")
    one_line(run("scripts/evaluate.py", "--policies", "equal", "--episodes", "1", "--quiet", "--out", str(mine)),
             f"{mine / 'config.yaml'} was not written by a run of dtcosim")
    one_line(run("scripts/train.py", "--algo", "ly-dtmppo", "--episodes", "1", "--quiet", "--out", str(mine)),
             f"{mine / 'config.yaml'} was not written by a run of dtcosim")
    assert (mine / "slots.csv").read_text() == "my data" and (mine / "config.yaml").read_text() == "my: config\n"
    assert sorted(f.name for f in mine.iterdir()) == ["config.yaml", "slots.csv"]
    # A file of another name that the run writes (found only on commit) is refused before anything moves.
    (mine / "config.yaml").unlink()
    (mine / "slots.csv").unlink()
    (mine / "figure.png").write_text("mine")
    with pytest.raises(OutputError, match=re.escape(f"{mine / 'figure.png'} was not written by a run of dtcosim")):
        with OutputDir(mine) as od:
            (od.path / "summary.json").write_text("{}")
            (od.path / "figure.png").write_text("new")
    assert sorted(f.name for f in mine.iterdir()) == ["figure.png"]
    # What a run of this project wrote, a later run replaces (the manifest marks it).
    out = tmp_path / "run"
    assert run("scripts/run_cosim.py", *ANALYTIC, "--out", str(out)).returncode == 0
    assert set((out / MANIFEST).read_text().split()) == {"config.yaml", "slots.csv", "summary.json"}
    assert run("scripts/evaluate.py", "--policies", "equal", "--episodes", "1", "--quiet", "--out",
               str(out)).returncode == 0
    assert not (out / "slots.csv").exists()  # the earlier run's, not the user's: removed
    # record_traces and reproduce: the same rule for their files.
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "meta.json").write_text("{}")
    one_line(run("scripts/record_traces.py", "--backend", "sumo", "--episodes", "1", "--out", str(traces),
                 timeout=120), f"{traces / 'meta.json'} was not written by a run of dtcosim")
    res = tmp_path / "results"
    res.mkdir()
    (res / "manifest.json").write_text("[1, 2]")
    one_line(run("scripts/reproduce.py", "--preset", "tiny", "--experiments", "convergence", "--algos", "equal",
                 "--out", str(res)), f"{res / 'manifest.json'} was not written by a run of dtcosim")


def test_a_root_a_home_folder_or_a_symlink_loop_is_not_an_output_folder(tmp_path):
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", "/"), "--out / is the root of a file system")
    home = tmp_path / "home"
    home.mkdir()
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", "~", env={**os.environ, "HOME": str(home)}),
             f"--out {home} is your home folder")
    one_line(run("scripts/train.py", "--algo", "ly-dtmppo", "--out", str(home), env={**os.environ, "HOME": str(home)}),
             f"--out {home} is your home folder")
    assert list(home.iterdir()) == []
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", str(loop)), f"--out {loop} is a symbolic link loop")
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", str(loop / "x")), "is a symbolic link loop")


# ---------------------------------------------------------------------------
# SIGTERM (and SIGHUP) as Ctrl-C

def _popen(script, *args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(test, timeout=120.0, what="the run to get going"):
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = {int(c) for t in Path(f"/proc/{p}/task").iterdir()
                    for c in (t / "children").read_text().split()}
        except OSError:
            continue
        todo += list(kids - out)
        out |= kids
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_saves_the_training_like_ctrl_c(tmp_path, sig):
    out = tmp_path / "run"
    p = _popen("scripts/train.py", "--algo", "ly-dtmppo", "--episodes", "100000", "--cvs", "2", "--set",
               "training.n_envs=2", "--quiet", "--no-tensorboard", "--out", str(out))
    try:
        _wait_for(lambda: (out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) > 4)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"terminated ({sig.name})", err
    done = int(re.search(r"interrupted: saved the state after (\d+) episodes; continue with --resume", err).group(1))
    assert done >= 4 and not list(tmp_path.glob(".run.lock"))  # the lock is released
    r = run("scripts/train.py", "--resume", str(out), "--episodes", str(done + 2), "--quiet", "--no-tensorboard")
    assert r.returncode == 0 and f"trained {done + 2} episodes" in r.stdout, r.stderr


@pytest.mark.parametrize("backend, procs", [("analytic", 3), pytest.param("sumo", 5, marks=pytest.mark.sumo)])
def test_sigterm_stops_the_workers_of_a_reproduction(tmp_path, backend, procs):
    p = _popen("scripts/reproduce.py", "--preset", "tiny", "--experiments", "convergence", "--episodes", "100000",
               "--workers", "2", "--backend", backend, "--out", str(tmp_path / "res"))
    try:
        # 2 workers and the resource tracker; on SUMO also the SUMO processes the workers started
        _wait_for(lambda: len(_descendants(p.pid)) >= procs, what="the worker processes")
        time.sleep(3)
        workers = _descendants(p.pid)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
        _wait_for(lambda: not any(_alive(w) for w in workers), timeout=20, what="the workers to stop")
    finally:
        p.kill()
    # The line is said; multiprocessing's resource tracker may add its own warning about the killed
    # workers' semaphores after it (under load), which is not ours to silence.
    assert p.returncode == 143 and "terminated (SIGTERM)" in err.strip().splitlines() and "Traceback" not in err, err


# ---------------------------------------------------------------------------
# --out on another file system

def test_out_on_another_file_system_stages_inside_it(tmp_path, monkeypatch):
    import shutil

    from cosim import outputs
    mnt = tmp_path / "volume"
    mnt.mkdir()
    code = (f"mount -t tmpfs none {mnt} && {sys.executable} {ROOT / 'scripts/run_cosim.py'} {' '.join(ANALYTIC)} "
            f"--out {mnt} && ls -a {mnt}")
    if shutil.which("unshare") and subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0:
        p = subprocess.run(["unshare", "-rm", "sh", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr  # was: Invalid cross-device link
        assert {"slots.csv", "summary.json", "config.yaml"} <= set(p.stdout.split()), p.stdout
        assert ".volume.lock" not in p.stdout and not list(tmp_path.glob(".volume*"))
    # Wherever mounting is not allowed: a folder on another device than its parent, as a mount point is.
    monkeypatch.setattr(outputs, "_same_device", lambda a, b: False)
    with outputs.OutputDir(mnt) as od:
        assert od.staging.parent == mnt.resolve() and od.lock_path.parent == mnt.resolve()
        (od.path / "summary.json").write_text("{}")
    assert sorted(f.name for f in mnt.iterdir()) == [outputs.MANIFEST, "summary.json"]


# ---------------------------------------------------------------------------
# A full disk or a file-size limit while writing a checkpoint or a policy (safetensors' own error)

def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path):
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))  # config.yaml and metrics.csv fit, not the state
    out = tmp_path / "run"
    p = run("scripts/train.py", "--algo", "ly-dtmppo", "--episodes", "2", "--cvs", "2", "--set", "training.n_envs=2",
            "--quiet", "--no-tensorboard", "--out", str(out), preexec_fn=limit)
    one_line(p, f"cannot write the outputs in {out} ({out / 'checkpoint.safetensors'}): file too large")
    assert not [f for f in out.iterdir() if ".tmp" in f.name]  # no half file
    assert not (out / "checkpoint.safetensors").exists()
    # A policy file (save_policy) the same way, and an error of safetensors that is no OS error stays itself.
    from agents.checkpoint import atomic_write
    from safetensors import SafetensorError

    def fail(p):
        Path(p).write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(OSError, match="No space left on device") as err:
        atomic_write(tmp_path / "policy.safetensors", fail)
    assert err.value.filename == str(tmp_path / "policy.safetensors") and list(tmp_path.iterdir()) == [out]
    with pytest.raises(SafetensorError, match="not contiguous"):
        atomic_write(tmp_path / "x", lambda p: (_ for _ in ()).throw(SafetensorError("not contiguous")))


# ---------------------------------------------------------------------------
# Recorded traces: schema, shapes and finiteness checked when opened

def _synthetic_traces(d: Path, n: int = 3, slots: int = 12, cvs: int = 2) -> None:
    from cosim.trace_mobility import write_meta, write_traces
    rng = np.random.default_rng(0)
    cfg = load_config().replace(**{"scenario.episode_slots": slots})
    arrays = {"x": rng.uniform(0, 700, (n, slots + 1, cvs)).astype(np.float32),
              "y": rng.uniform(0, 15, (n, slots + 1, cvs)).astype(np.float32),
              "speed": rng.uniform(0, 30, (n, slots + 1, cvs)).astype(np.float32),
              "heading": rng.uniform(0, 360, (n, slots + 1, cvs)).astype(np.float32),
              "lane": np.zeros((n, slots + 1, cvs), np.int16), "active": np.ones((n, slots + 1, cvs), bool),
              "seeds": np.arange(n, dtype=np.int64)}
    write_traces(d, arrays)
    write_meta(d, cfg, cvs, cfg.scenario.rsus, "synthetic")


def _damage_npz(path: Path, **changes):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del arrays[k]
    np.savez(path, **arrays)


TRACE_DAMAGE = {
    "truncated": (lambda d: (d / "traces_0000.npz").write_bytes((d / "traces_0000.npz").read_bytes()[:300]),
                  "traces_0000.npz: not a readable .npz archive"),
    "meta_without_slot_s": (lambda d: (d / "meta.json").write_text('{"n_cvs": 2, "episode_slots": 12, "rsus": []}'),
                            "meta.json: slot_s is missing"),
    "meta_a_list": (lambda d: (d / "meta.json").write_text("[1, 2]"), "meta.json: a JSON list, not an object"),
    "meta_bad_rsu": (lambda d: (d / "meta.json").write_text(
        (d / "meta.json").read_text().replace('"radius": 200.0', '"radius": "far"', 1)),
        "meta.json: rsus[0].radius must be a finite number, got 'far'"),
    "long_seeds": (lambda d: _damage_npz(d / "traces_0000.npz", seeds=np.arange(7)),
                   "traces_0000.npz: field seeds holds 7 seeds for 3 episodes"),
    "nan_positions": (lambda d: _damage_npz(d / "traces_0000.npz", x=np.full((3, 13, 2), np.nan, np.float32)),
                      "traces_0000.npz: field x holds NaN or infinite values"),
    "huge_positions": (lambda d: _damage_npz(d / "traces_0000.npz", y=np.full((3, 13, 2), 3e38, np.float32)),
                       "traces_0000.npz: field y holds 3e+38, beyond any map"),
    "inf_speed": (lambda d: _damage_npz(d / "traces_0000.npz", speed=np.full((3, 13, 2), -np.inf, np.float32)),
                  "traces_0000.npz: field speed holds NaN or infinite values"),
    "missing_field": (lambda d: _damage_npz(d / "traces_0000.npz", lane=None), "field lane is missing"),
    "bad_shape": (lambda d: _damage_npz(d / "traces_0000.npz", active=np.ones((3, 13), bool)),
                  "field active has shape [3, 13], field x [3, 13, 2]"),
}


@pytest.mark.parametrize("case", sorted(TRACE_DAMAGE))
def test_damaged_traces_are_one_line_naming_file_and_field(tmp_path, case):
    from agents import make_trainer
    from cosim.env import BatchCoSim
    d = tmp_path / "traces"
    _synthetic_traces(d)
    cfg = load_config().replace(**{"backend": "trace", "trace.dir": str(d), "scenario.n_cvs": 2,
                                   "scenario.episode_slots": 12, "trace.part": "all"})
    BatchCoSim(cfg, n_envs=1).close()  # the intact folder replays
    damage, message = TRACE_DAMAGE[case]
    damage(d)
    with pytest.raises(CosimError, match=re.escape(message)) as err:
        BatchCoSim(cfg, n_envs=1)
    assert str(d) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CosimError, match=re.escape(message)):  # training refuses them too: no policy is written
        make_trainer("ly-dtmppo", cfg.replace(**{"training.n_envs": 1}))
    if case == "truncated":
        one_line(run("scripts/run_cosim.py", "--traces", str(d), "--cvs", "2", "--policy", "equal", "--quiet",
                     "--set", "scenario.episode_slots=12", "--set", "trace.part=all", "--out", str(tmp_path / "o")),
                 message)


# ---------------------------------------------------------------------------
# Absurd counts; Ctrl-C inside a numba kernel

def test_counts_that_overflow_the_seed_range_blame_the_count(tmp_path):
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--episodes", str(10**12), "--out", str(tmp_path / "o")),
             "--episodes 1000000000000 is too many: episode i is reset with seed --seed + i, at most 4294967295")
    one_line(run("scripts/evaluate.py", "--policies", "equal", "--episodes", str(10**12), "--out", str(tmp_path / "e")),
             "--episodes 1000000000000 is too many: episode i is reset with seed --eval-seed + i, at most 4294967295, "
             "so from --eval-seed 10000 (the default) at most 4294957296 episodes fit")
    one_line(run("scripts/evaluate.py", "--policies", "equal", "--episodes", "10", "--eval-seed", str(2**32 - 5),
                 "--out", str(tmp_path / "e")), "--eval-seed must be in [0, 4294967286], got 4294967291")
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("inner, code, line", [("KeyboardInterrupt()", 130, "interrupted"),
                                               ("Terminated(15)", 143, "terminated (SIGTERM)")])
def test_an_interrupt_inside_a_numba_kernel_is_an_interrupt(inner, code, line):
    prog = ("from cosim.cli import run_main\nfrom cosim.signals import Terminated\n"
            "def main():\n    try:\n"
            f"        raise {inner}\n"
            "    except KeyboardInterrupt as exc:\n"
            "        raise SystemError('<built-in function kernel> returned a result with an exception set') from exc\n"
            "run_main(main)\n")
    p = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == code and p.stderr.strip() == line, p.stderr
    # Any other SystemError stays a traceback: it is a bug, not the user's.
    bug = "from cosim.cli import run_main\ndef main():\n    raise SystemError('x')\nrun_main(main)\n"
    p = subprocess.run([sys.executable, "-c", bug], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" in p.stderr


# ---------------------------------------------------------------------------
# A frozen SUMO under TraCI; --ray with nothing listening

@pytest.mark.sumo
def test_a_frozen_sumo_times_out_is_ended_and_named():
    from cosim.sumo_mobility import SumoMobility
    mob = SumoMobility(load_config().replace(**{"sumo.use_libsumo": False, "sumo.traci_timeout_s": 2}))
    try:
        mob.reset(0)
        pid = mob.sumo_pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(CosimError, match=rf"sumo \(pid {pid}\) did not answer TraCI within 2 s, stopped or "
                                             r"stuck; it was ended \(sumo.traci_timeout_s"):
            mob.advance(1.0)
        assert time.monotonic() - t0 < 30
    finally:
        mob.close()
    _wait_for(lambda: not _alive(pid), timeout=10, what="the frozen SUMO to end")
    # With sumo.restart_on_crash a new SUMO runs the slot again, as after a crash.
    mob = SumoMobility(load_config().replace(**{"sumo.use_libsumo": False, "sumo.traci_timeout_s": 2,
                                                "sumo.restart_on_crash": True}))
    try:
        mob.reset(0)
        os.kill(mob.sumo_pid, signal.SIGSTOP)
        with pytest.warns(RuntimeWarning, match="restarting it"):
            state = mob.advance(1.0)
        assert state.active.any() and mob.sumo_pid != pid
    finally:
        mob.close()


def test_ray_address_with_nothing_listening_is_one_line(tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    one_line(run("scripts/reproduce.py", "--preset", "tiny", "--experiments", "convergence", "--algos", "equal",
                 "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "r"), timeout=120),
             f"--ray 127.0.0.1:{port}: no Ray cluster answers at 127.0.0.1:{port} within 10 s")
    assert time.monotonic() - t0 < 60
    from agents.experiments import check_ray_address
    with pytest.raises(CosimError, match=r"no Ray cluster answers at ::1:\d+|no Ray cluster answers"):
        check_ray_address(f"ray://127.0.0.1:{port}", timeout_s=2)
    check_ray_address("local")


# ---------------------------------------------------------------------------
# The shipped road named explicitly

@pytest.mark.sumo
def test_the_shipped_road_named_explicitly_is_the_papers_road(tmp_path):
    runs = {}
    for name, args in (("default", []), ("relative", ["--sumocfg", "sumo_net/road/road.sumocfg"]),
                       ("absolute", ["--sumocfg", str(ROOT / "sumo_net" / "road" / "road.sumocfg")])):
        p = run("scripts/run_cosim.py", "--policy", "equal", "--quiet", *args, "--out", str(tmp_path / name),
                "--set", "scenario.episode_slots=10", timeout=300)
        assert p.returncode == 0, p.stderr
        runs[name] = (tmp_path / name / "slots.csv").read_text()
    assert runs["relative"] == runs["default"] == runs["absolute"]


# ---------------------------------------------------------------------------
# A map on which no candidate RSU site exists

def test_a_map_without_candidate_rsu_sites_is_one_line():
    from cosim.config import RSUConfig
    from cosim.sumo_mobility import _NetInfo, _place_by_traffic, greedy_max_coverage
    zero = _NetInfo(bbox=(0.0, 0.0, 0.0, 0.0), roads=((0.0, ((0.0, 0.0), (0.0, 0.0))),) * 3)  # zero-length lanes
    template = [RSUConfig(0.0, 0.0, 10.0, 200.0)] * 2
    for samples in (np.zeros((0, 2)), np.zeros((5, 2))):  # no traffic seen, or some
        with pytest.raises(CosimError, match="no candidate RSU site on this map: none of its roads") as err:
            _place_by_traffic(template, zero, samples, 100.0, 0, sites="both")
        assert "\n" not in str(err.value)
    with pytest.raises(CosimError, match="no candidate RSU site on this map"):
        greedy_max_coverage(np.zeros((0, 2)), np.zeros((4, 2)), [200.0, 200.0], 100.0)
    chosen, _ = greedy_max_coverage(np.array([[0.0, 0.0], [300.0, 0.0]]), np.zeros((0, 2)), [200.0], 100.0)
    assert len(chosen) == 1  # candidates but no samples still place


def test_a_run_folder_of_a_version_before_the_manifest_is_still_replaced(tmp_path):
    from cosim.outputs import MANIFEST
    out = tmp_path / "old"
    assert run("scripts/run_cosim.py", *ANALYTIC, "--out", str(out)).returncode == 0
    (out / MANIFEST).unlink()  # as an older version left it: its summary.json tells it is a run's
    p = run("scripts/run_cosim.py", *ANALYTIC, "--out", str(out))
    assert p.returncode == 0, p.stderr
    (out / MANIFEST).unlink()
    (out / "summary.json").write_text('{"mine": 1}')  # ... and a summary.json that is not ours does not
    one_line(run("scripts/run_cosim.py", *ANALYTIC, "--out", str(out)), "was not written by a run of dtcosim")
