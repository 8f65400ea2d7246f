"""Watching a run: CV labels, their placement in sumo-gui, the dashboard and the recording."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest

from cosim.config import CosimError, load_config
from cosim.dashboard import combined_frame, write_animation
from cosim.gui import LabelMetrics, layout_labels, short_label, slot_line
from cosim.palette import rsu_hue

ROOT = Path(__file__).resolve().parent.parent
SLOTS = 8  # episodes this long keep the recording tests short (the default is 30 slots)
NO_XVFB = "xvfb-run is not installed (Debian: apt-get install xvfb xauth), so sumo-gui cannot run here"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/run_cosim.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _slot(split: list[list[float]], instr: list[list[bool]], active: list[bool]) -> SimpleNamespace:
    return SimpleNamespace(decision=SimpleNamespace(split=np.array([split])),
                           result=SimpleNamespace(instr_mode=np.array([instr]), active=np.array([active])))


def test_short_labels_name_the_cv_and_its_largest_part() -> None:
    out = _slot([[0.4, 0.6, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7], [0.5, 0.5, 0.0]],
                [[False, False], [False, False], [False, True], [False, False]], [True, True, True, False])
    assert [short_label(out, 0, i) for i in range(4)] == ["cv0 R0 60%", "cv1 local", "cv2 R1 70% InstrT",
                                                          "cv3 inactive"]


def test_slot_line_counts_where_the_cvs_go_and_names_the_slowest() -> None:
    out = _slot([[0.4, 0.6, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7], [0.5, 0.5, 0.0]],
                [[False, False], [False, False], [False, True], [False, False]], [True, True, True, False])
    out.result.delay = np.array([[0.30, 0.10, 0.45, 9.0]])  # the inactive CV's delay is not a CV's
    out.result.system_cost, out.result.reward = np.array([0.912]), np.array([-4.5])
    out.result.deadline_miss = np.array([[False, False, True, False]])
    line = slot_line(out, 3)
    assert line == "t=  3 cost   0.912 R   -4.500 misses 1 | CVs R0 1, R1 1, local 1, inactive 1 | InstrT 1 | " \
                   "slowest cv2 0.45 s"


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("n", [5, 12, 40])
def test_labels_on_the_road_overlap_nothing(n: int) -> None:
    """The paper's road at sumo-gui's default zoom: labels clear of the road, the RSU names and each other."""
    px_per_m, view, band = 1190 / 728.0, (-14.0, -118.0, 714.0, 118.0), (-9.0, 9.0)
    rsu_names = [(x - 20.0, 19.0, x + 20.0, 28.0) for x in (200.0, 350.0, 500.0)]
    rng = np.random.default_rng(n)
    for _ in range(20):
        lanes = rng.integers(0, 4, n)
        anchors = np.stack([rng.uniform(0, 700, n), -5.625 + 3.75 * lanes], axis=-1)
        texts = [f"cv{i} R{rng.integers(3)} {rng.integers(1, 101)}%" + (" InstrT" if rng.random() < 0.2 else "")
                 for i in range(n)]
        boxes = layout_labels(anchors, texts, px_per_m, view, band, rsu_names)
        for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
            assert not _overlap(a, b), (texts[i], texts[j])
        for (x, y), box, text in zip(anchors, boxes, texts):
            assert not _overlap(box, (view[0], band[0], view[2], band[1]))     # off the road
            assert not any(_overlap(box, o) for o in rsu_names)
            assert view[0] <= box[0] and box[2] <= view[2] and view[1] <= box[1] and box[3] <= view[3]
            assert (box[1] > band[1]) == (y > 0)                                 # on its vehicle's side
            assert box[0] <= x <= box[2] or box[0] == view[0] or box[2] == view[2]  # above or below it
            w, h = LabelMetrics().size_m(text, px_per_m)
            assert box[2] - box[0] == pytest.approx(w) and box[3] - box[1] == pytest.approx(h)


def test_labels_off_the_road_overlap_each_other_nowhere() -> None:
    """Another map: no road band, labels stack above (then below) their vehicles."""
    anchors = np.array([[50.0, 50.0]] * 6 + [[52.0, 49.0], [300.0, 10.0]])
    boxes = layout_labels(anchors, [f"cv{i} local" for i in range(8)], 2.0, (0.0, 0.0, 400.0, 200.0))
    for a, b in itertools.combinations(boxes, 2):
        assert not _overlap(a, b)
    assert boxes[0][1] > 50.0  # the first goes right above its vehicle


def test_combined_frames_stack_a_wide_view_and_put_a_tall_one_beside(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (1190, 560), "white").save(tmp_path / "dash_00000.png")
    Image.new("RGB", (1190, 285), "red").save(tmp_path / "wide.png")
    Image.new("RGB", (800, 800), "red").save(tmp_path / "tall.png")
    wide = combined_frame(tmp_path / "dash_00000.png", tmp_path / "wide.png")
    assert wide.shape == (285 + 560, 1190, 3) and tuple(wide[0, 0]) == (255, 0, 0)
    tall = combined_frame(tmp_path / "dash_00000.png", tmp_path / "tall.png")  # 560 + 1190 wide: scaled down
    assert tall.shape[1] == 1190 and tall.shape[0] == round(560 * 1190 / (560 + 1190))
    assert tuple(tall[0, 0]) == (255, 0, 0) and tuple(tall[0, -1]) == (255, 255, 255)
    assert combined_frame(tmp_path / "dash_00000.png", None).shape == (560, 1190, 3)


def test_animation_needs_frames(tmp_path: Path) -> None:
    with pytest.raises(CosimError, match="no dashboard frames"):
        write_animation(tmp_path)


def _colour_fraction(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> float:
    return float((np.abs(img[..., :3].astype(int) - np.array(rgb)).max(axis=-1) <= tol).mean())


def test_headless_record_writes_dashboard_frames_and_animation(tmp_path: Path) -> None:
    """--record without --gui (analytic backend): dashboard frames and a GIF, no window, no sumo-gui frames."""
    import imageio.v3 as iio

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "dash_00099.png").write_bytes(b"an older recording")  # replaced, not mixed in
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    p = _run("--backend", "analytic", "--record", str(frames), "--quiet", "--policy", "nearest",
             "--set", f"scenario.episode_slots={SLOTS}", "--out", str(tmp_path / "run"), env=env)
    assert p.returncode == 0, p.stderr
    dash = sorted(frames.glob("dash_*.png"))
    assert [f.name for f in dash] == [f"dash_{i:05d}.png" for i in range(SLOTS)]
    assert not list(frames.glob("slot_*.png"))
    gif = iio.imread(frames / "cosim.gif", index=None)
    assert gif.shape[0] == SLOTS
    img = iio.imread(dash[-1])
    assert img.shape[:2] == (560, 1190)
    # Not blank: mostly white, but the split bars and the backlog lines carry the RSU hues.
    assert 0.5 < _colour_fraction(img, (255, 255, 255)) < 0.97
    assert sum(_colour_fraction(img, rsu_hue(k)) for k in range(3)) > 0.003
    assert np.unique(img[..., :3].reshape(-1, 3), axis=0).shape[0] > 50


def test_dashboard_window_without_display_fails_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    p = _run("--backend", "analytic", "--dashboard", "--quiet", "--policy", "equal", "--out", str(tmp_path), env=env)
    assert p.returncode == 2 and "DISPLAY is not set" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.sumo
def test_gui_records_sumo_and_dashboard_frames_and_one_animation(tmp_path: Path) -> None:
    """sumo-gui under a virtual display, --record writes both kinds of frame and a GIF."""
    if shutil.which("xvfb-run") is None:
        pytest.skip(NO_XVFB)
    import imageio.v3 as iio

    frames = tmp_path / "frames"
    p = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x800x24", sys.executable, "scripts/run_cosim.py",
                        "--gui", "--record", str(frames), "--episodes", "1", "--delay", "0", "--quiet",
                        "--policy", "equal", "--set", f"scenario.episode_slots={SLOTS}",
                        "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    sumo = sorted(frames.glob("slot_*.png"))
    assert [f.name for f in sumo] == [f"slot_{i:05d}.png" for i in range(SLOTS)]
    assert len(list(frames.glob("dash_*.png"))) == SLOTS
    view = iio.imread(sumo[-1])
    # The whole road across the view, and CVs and coverage rims in the RSUs' hues.
    assert view.shape[1] >= 1000
    assert all(_colour_fraction(view, rsu_hue(k), tol=30) > 0.0005 for k in range(3))
    gif = iio.imread(frames / "cosim.gif", index=None)
    assert gif.shape[0] == SLOTS
    still = combined_frame(frames / f"dash_{SLOTS - 1:05d}.png", sumo[-1])
    assert still.shape[0] > 560  # sumo-gui's wide view stacked over the dashboard
    # the per-slot terminal lines: where the CVs' largest parts go, short for any fleet
    slot_lines = [line for line in p.stdout.splitlines() if line.startswith("ep 0 t=")]
    assert len(slot_lines) == SLOTS and all("| CVs " in line and len(line) < 120 for line in slot_lines)


@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip(NO_XVFB)
    proc = subprocess.Popen([xvfb, "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    monkeypatch.setenv("DISPLAY", f":{proc.stdout.readline().strip()}")
    yield os.environ["DISPLAY"]
    proc.terminate()
    proc.wait()


@pytest.mark.sumo
def test_sumo_gui_labels_do_not_overlap_at_five_cvs(display: str) -> None:
    """The labels sumo-gui draws (POIs) for the default 5 CVs, over an episode: never on top of each other."""
    from cosim.sumo_mobility import SumoMobility

    cfg = load_config().replace(**{"sumo.extra_args": ["--delay", "0"]})
    mob = SumoMobility(cfg, gui=True)
    try:
        mob.reset(3)
        api = mob._sumo.api
        metrics = LabelMetrics()
        for slot in range(30):
            tags = [f"cv{i} R{i % 3} {10 * i + 5}%" for i in range(5)]
            mob.show_decisions([rsu_hue(i % 3) + (255,) for i in range(5)], tags, tags)
            ids = [f"cosim_label{i}" for i in range(5)]
            assert sorted(i for i in api.poi.getIDList() if i.startswith("cosim_label")) == ids
            boxes = []
            for i, name in enumerate(ids):
                x, y = api.poi.getPosition(name)
                y -= metrics.drop_px / mob._px_per_m  # where sumo-gui draws the text
                assert api.poi.getType(name) == tags[i]
                w, h = metrics.size_m(tags[i], mob._px_per_m)
                boxes.append((x - w / 2, y - h / 2, x + w / 2, y + h / 2))
                assert abs(y) > 9.0  # off the road
            for a, b in itertools.combinations(boxes, 2):
                assert not _overlap(a, b), f"slot {slot}"
            mob.advance(1.0)
    finally:
        mob.close()


@pytest.mark.parametrize("twin", [True, False])
def test_dashboard_draws_the_simulators_numbers(twin: bool) -> None:
    """Off-screen dashboard (Agg, no pyplot): its artists hold exactly what the slot reported."""
    from cosim.dashboard import Dashboard
    from cosim.env import BatchCoSim
    from agents import make_policy

    # Slow RSUs, so that backlogs build up; a stale twin, so that its view lags the truth.
    cfg = load_config().replace(**{"twin.enabled": twin, "twin.staleness": 1, "compute.rsu_cpu_hz": 2.5e9})
    sim = BatchCoSim(cfg, backend="analytic", seed=0)
    policy = make_policy("nearest", sim.n_rsus, seed=0, env=sim)
    dash = Dashboard(sim, show=False)
    obs, _ = sim.reset(0)
    costs = []
    for slot in range(6):
        out = sim.step(policy.act(obs, deterministic=True))
        obs = out.obs
        costs.append(float(out.result.system_cost[0]))
        dash.update(out, sim, 0, slot)
    assert list(dash.l_cost.get_ydata()) == pytest.approx(costs)
    assert [b.get_height() for b in dash.b_delay] == pytest.approx(out.result.delay[0])
    assert [b.get_height() for b in dash.b_energy] == pytest.approx(out.result.energy[0])
    widths = np.array([[b.get_width() for b in bars] for bars in dash.b_split])  # (K+1, I)
    assert widths.T == pytest.approx(out.decision.split[0])
    true_q = sim.queues.q_rsu[0] / sim.params.W_ref
    assert [b.get_height() for b in dash.b_true] == pytest.approx(true_q)
    seen = [b.get_height() for b in dash.b_seen]
    assert true_q.max() > 1.0
    if twin:
        assert seen == pytest.approx(obs[0][:, sim.layout["dt_backlog"]].mean(axis=0))
        assert max(seen) > 0.5 and seen != pytest.approx(true_q)  # one slot behind
        assert "forecast off " in dash.ax["twin"].get_title()
    else:
        assert seen == pytest.approx(np.zeros(sim.n_rsus))
        assert "twin off" in dash.ax["twin"].get_title()
    assert [list(line.get_ydata()) for line in dash.l_rsu][0][-1] == pytest.approx(true_q[0])
    # No RSU colour outside what is per RSU: the delay bars are white (hatched when missed), energy brown.
    from matplotlib.colors import to_rgb
    from cosim.palette import RSU_HUES
    hues = {tuple(round(c / 255, 3) for c in h) for h in RSU_HUES}
    for bar in [*dash.b_delay, *dash.b_energy]:
        assert tuple(round(c, 3) for c in to_rgb(bar.get_facecolor())) not in hues
    assert dash.t_rsu.get_text() == ""  # backlogs built up: no note over the panel
