"""The system model of docs/model.md sections 3-7, as pure functions over arrays.

Arrays carry batch axes: E environments, I client vehicles (CVs), K RSUs.
Nothing here touches SUMO, torch or a global random state: randomness comes
in through an explicit ``numpy.random.Generator`` and state through
:class:`QueueState`, so every function is a plain map from arrays to arrays.

Units are SI throughout (m, s, Hz, bit, cycles, W, J); cost and reward are
normalised by one average task done locally (T_ref, E_ref, W_ref, section 7).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from .config import Config, reference_scales

_EPS = 1e-12  # keeps rates and spectral efficiencies strictly positive under deep fades
_LOGIT_CLIP = 50.0  # raw actions beyond this saturate every softmax/sigmoid anyway


@dataclass(frozen=True, eq=False)
class ModelParams:
    """Everything the model needs, in SI units, derived once from a :class:`Config`."""

    rsu_xy: np.ndarray        # (K, 2)
    rsu_height: np.ndarray    # (K,)
    rsu_radius: np.ndarray    # (K,)
    bandwidth: float
    noise: float
    tx_power: float
    sensing_gain: float
    pathloss_db_1m: float
    pathloss_slope_db: float
    rsu_cpu: float
    twin_reserve: float
    kappa_cv: float
    kappa_rsu: float
    min_rsu_share: float
    tau: float
    V: float
    alpha: float
    energy_budget: float      # per CV per slot
    window: int
    deadline_penalty: float
    min_bandwidth_share: float
    min_split_share: float
    cv_cpu_range: tuple[float, float]
    size_range: tuple[float, float]
    instr_range: tuple[float, float]
    intensity_range: tuple[float, float]
    co_intensity_range: tuple[float, float]
    deadline_range: tuple[float, float]
    T_ref: float
    E_ref: float
    W_ref: float
    bandwidth_mode: str = "paper"  # actions.bandwidth: paper | full
    split_mode: str = "paper"      # actions.split: paper | balanced
    cpu_mode: str = "paper"        # actions.cpu: paper | proportional

    @property
    def n_rsus(self) -> int:
        return self.rsu_xy.shape[0]

    @property
    def paper_actions(self) -> bool:
        """True when every ``actions.*`` parameterisation is the paper's, i.e. :func:`project`
        alone is the environment's projection (what a fused fast path may assume)."""
        return (self.bandwidth_mode, self.split_mode, self.cpu_mode) == ("paper", "paper", "paper")

    @property
    def rsu_capacity(self) -> float:
        """F_max - C_twin: what an RSU can give to offloaded tasks per second."""
        return self.rsu_cpu - self.twin_reserve

    @classmethod
    def from_config(cls, cfg: Config, rsus=None) -> ModelParams:
        """``rsus`` overrides cfg.scenario.rsus (e.g. RSUs placed on a SUMO map)."""
        rsus = tuple(rsus) if rsus is not None else cfg.scenario.rsus
        t, c, ch, ly = cfg.tasks, cfg.compute, cfg.channel, cfg.lyapunov
        ref = reference_scales(cfg)  # one average task done locally
        return cls(
            rsu_xy=np.array([[r.x, r.y] for r in rsus], dtype=float),
            rsu_height=np.array([r.height for r in rsus], dtype=float),
            rsu_radius=np.array([r.radius for r in rsus], dtype=float),
            bandwidth=ch.bandwidth_hz, noise=ch.noise_w, tx_power=ch.tx_power_w,
            sensing_gain=ch.sensing_gain, pathloss_db_1m=ch.pathloss_db_1m,
            pathloss_slope_db=ch.pathloss_slope_db,
            rsu_cpu=c.rsu_cpu_hz, twin_reserve=c.twin_reserve_hz, kappa_cv=c.kappa_cv,
            kappa_rsu=c.kappa_rsu, min_rsu_share=c.min_rsu_share_hz,
            tau=cfg.scenario.slot_s, V=ly.V, alpha=ly.alpha, energy_budget=ly.energy_budget_j,
            window=ly.little_window, deadline_penalty=ly.deadline_penalty,
            min_bandwidth_share=cfg.actions.min_bandwidth_share,
            min_split_share=cfg.actions.min_split_share,
            cv_cpu_range=c.cv_cpu_hz, size_range=t.size_bits, instr_range=t.instr_bits,
            intensity_range=t.intensity_cycles_per_bit, co_intensity_range=t.co_intensity_cycles_per_bit,
            deadline_range=t.deadline_s,
            T_ref=ref.T_ref, E_ref=ref.E_ref, W_ref=ref.W_ref,
            bandwidth_mode=cfg.actions.bandwidth, split_mode=cfg.actions.split, cpu_mode=cfg.actions.cpu,
        )


# ---------------------------------------------------------------------------
# Random inputs of a slot (explicit generator, no global state)

@dataclass
class Tasks:
    """One task per CV per slot, arrays of shape (E, I)."""

    size: np.ndarray          # G, bit
    instr: np.ndarray         # G_ins, bit
    intensity: np.ndarray     # I_task, cycles/bit
    co_intensity: np.ndarray  # I_co, cycles/bit
    deadline: np.ndarray      # T_max, s


def draw_tasks(rng: np.random.Generator, p: ModelParams, shape: tuple[int, ...]) -> Tasks:
    u = lambda r: rng.uniform(r[0], r[1], shape)  # noqa: E731
    return Tasks(size=u(p.size_range), instr=u(p.instr_range), intensity=u(p.intensity_range),
                 co_intensity=u(p.co_intensity_range), deadline=u(p.deadline_range))


def draw_cv_cpu(rng: np.random.Generator, p: ModelParams, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(p.cv_cpu_range[0], p.cv_cpu_range[1], shape)


def draw_fading(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """|h|^2 with h ~ CN(0, 1): exponential with mean 1."""
    return rng.exponential(1.0, shape)


# ---------------------------------------------------------------------------
# Geometry and channel (section 3)

def horizontal_distance(p: ModelParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(E, I) positions -> (E, I, K) horizontal CV-RSU distances."""
    dx = p.rsu_xy[:, 0] - x[..., None]
    dy = p.rsu_xy[:, 1] - y[..., None]
    return np.hypot(dx, dy)


def distance_3d(p: ModelParams, horizontal: np.ndarray) -> np.ndarray:
    """Eq. (2): the antenna height adds to the horizontal distance."""
    return np.sqrt(horizontal**2 + p.rsu_height**2)


def coverage(p: ModelParams, horizontal: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    cov = horizontal <= p.rsu_radius
    if active is not None:
        cov = cov & active[..., None]
    return cov


def path_gain(p: ModelParams, d: np.ndarray) -> np.ndarray:
    """Linear large-scale gain g = 10^((a - b log10 d) / 10)."""
    return 10.0 ** ((p.pathloss_db_1m - p.pathloss_slope_db * np.log10(d)) / 10.0)


def spectral_efficiency(p: ModelParams, d: np.ndarray, fading: np.ndarray) -> np.ndarray:
    """log2(1 + P |h|^2 g / sigma^2), bit/s/Hz, before bandwidth and sensing gain."""
    snr = p.tx_power * fading * path_gain(p, d) / p.noise
    return np.maximum(np.log2(1.0 + snr), _EPS)


# ---------------------------------------------------------------------------
# Actions and their projection onto C4-C6 (section 4)

@dataclass
class Decision:
    """A feasible decision of every CV; shapes (E, I, K+1) for split, (E, I, K) else."""

    split: np.ndarray      # [l_loc, l_i1..l_iK], sums to 1 (C5)
    bandwidth: np.ndarray  # b_ik, sum over k <= 1 (C4)
    cpu_request: np.ndarray  # w_ik in [0, 1], where a part is offloaded
    cpu: np.ndarray        # F_ik, Hz; sum over i <= F_max - C_twin per RSU (C6)

    @property
    def offloaded(self) -> np.ndarray:
        return self.split[..., 1:] > 0


@dataclass(frozen=True)
class ActionLayout:
    """Named blocks of one CV's raw action for K RSUs; every consumer indexes by name.

    ``split`` (K+1 logits: local, then RSU 1..K), ``bandwidth`` (K logits for RSU 1..K,
    then the "unused" logit when ``unused_bandwidth``), ``cpu`` (K request logits).
    The environment's actions have the unused logit (docs/model.md's softmax over K+1);
    the optimiser's parameters do not (it always uses all bandwidth).
    """

    n_rsus: int
    unused_bandwidth: bool = True

    @property
    def local(self) -> int:
        """The local share's logit (the first of ``split``)."""
        return 0

    @property
    def split(self) -> slice:
        return slice(0, self.n_rsus + 1)

    @property
    def split_rsu(self) -> slice:
        return slice(1, self.n_rsus + 1)

    @property
    def bandwidth(self) -> slice:
        start = self.n_rsus + 1
        return slice(start, start + self.n_rsus + int(self.unused_bandwidth))

    @property
    def bandwidth_rsu(self) -> slice:
        start = self.n_rsus + 1
        return slice(start, start + self.n_rsus)

    @property
    def bandwidth_unused(self) -> int:
        if not self.unused_bandwidth:
            raise AttributeError("this layout has no unused-bandwidth entry")
        return 2 * self.n_rsus + 1

    @property
    def cpu(self) -> slice:
        return slice(self.bandwidth.stop, self.bandwidth.stop + self.n_rsus)

    @property
    def dim(self) -> int:
        return self.cpu.stop

    def assemble(self, split: np.ndarray, bandwidth: np.ndarray, cpu: np.ndarray) -> np.ndarray:
        """Blocks (..., K+1), (..., K[+1]), (..., K) -> one action array (..., dim)."""
        return np.concatenate([split, bandwidth, cpu], axis=-1)


def action_dim(n_rsus: int) -> int:
    """Raw action length of the environment's :class:`ActionLayout`: 3K+2."""
    return ActionLayout(n_rsus).dim


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _floor_within_budget(x: np.ndarray, used: np.ndarray, floor: float, budget: float, axis: int) -> np.ndarray:
    """Raise used entries to ``floor`` and, if their sum along ``axis`` then exceeds
    ``budget``, shrink only the amounts above the floor so that it does not."""
    xf = np.where(used, np.maximum(x, floor), 0.0)
    n = used.sum(axis=axis, keepdims=True)
    total = xf.sum(axis=axis, keepdims=True)
    over = total > budget
    room = np.where(over, total - n * floor, 1.0)
    scale = np.where(over, (budget - n * floor) / np.where(room > 0, room, 1.0), 1.0)
    return np.where(used, floor + (xf - floor) * scale, 0.0)


def allocate_cpu(p: ModelParams, split: np.ndarray, request: np.ndarray) -> np.ndarray:
    """C6: requests count where a part is offloaded and are scaled down per RSU
    when they add up to more than 1; F_ik >= min_rsu_share where used."""
    used = split[..., 1:] > 0
    w = np.where(used, request, 0.0)
    load = np.maximum(1.0, w.sum(axis=-2, keepdims=True))
    F = p.rsu_capacity * w / load
    return _floor_within_budget(F, used, p.min_rsu_share, p.rsu_capacity, axis=-2)


def make_decision(p: ModelParams, split: np.ndarray, bandwidth: np.ndarray, cpu_request: np.ndarray) -> Decision:
    """Feasible shares -> Decision: b and w are zeroed where nothing is offloaded,
    b_min is enforced on used links, and RSU CPU is allocated (C6)."""
    used = split[..., 1:] > 0
    b = _floor_within_budget(bandwidth, used, p.min_bandwidth_share, 1.0, axis=-1)
    w = np.where(used, cpu_request, 0.0)
    return Decision(split=split, bandwidth=b, cpu_request=w, cpu=allocate_cpu(p, split, w))


def project(p: ModelParams, raw: np.ndarray, covered: np.ndarray, active: np.ndarray | None = None) -> Decision:
    """Any raw action (E, I, 3K+2) -> a decision that meets C4-C6.

    Split: softmax over K+1, RSUs out of range masked out, parts below
    ``min_split_share`` dropped (the largest part always kept), renormalised.
    Bandwidth: first K entries of a softmax over K+1. CPU: sigmoid requests.
    """
    lay = ActionLayout(p.n_rsus)
    raw = _clip_raw(raw)
    split = _split_from_logits(p, raw[..., lay.split], covered, active)
    bandwidth = _softmax(raw[..., lay.bandwidth])[..., : p.n_rsus]
    request = 1.0 / (1.0 + np.exp(-raw[..., lay.cpu]))
    return make_decision(p, split, bandwidth, request)


def _clip_raw(raw: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(raw, dtype=float)), -_LOGIT_CLIP, _LOGIT_CLIP)


def _split_from_logits(p: ModelParams, logits: np.ndarray, covered: np.ndarray,
                       active: np.ndarray | None) -> np.ndarray:
    """The paper's split: softmax over K+1, uncovered RSUs and inactive CVs masked, small parts dropped."""
    split = _softmax(logits)
    split[..., 1:] *= covered
    if active is not None:
        split[..., 0] = np.where(active, split[..., 0], 1.0)
        split[..., 1:] *= active[..., None]
    split /= split.sum(axis=-1, keepdims=True)
    return drop_small_parts(split, p.min_split_share)


def drop_small_parts(split: np.ndarray, min_share: float) -> np.ndarray:
    """Parts below ``min_share`` are dropped (the largest always kept) and the rest renormalised,
    so that a softmax's tiny shares do not pay an RSU's queueing delay."""
    if min_share <= 0:
        return split
    keep = (split >= min_share) | (split == split.max(axis=-1, keepdims=True))
    split = np.where(keep, split, 0.0)
    return split / split.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# Action parameterisations beyond the paper's (actions.bandwidth, actions.split, actions.cpu)
#
# Each keeps C4-C6 and only narrows what the paper's projection can produce, so the per-slot
# optimiser over the paper's parameterisation (dpp-opt) bounds every option from below.

def masked_softmax(z: np.ndarray, mask: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax over the entries where ``mask``; all zeros where nothing is allowed."""
    zm = np.where(mask, z, -np.inf)
    top = zm.max(axis=axis, keepdims=True)
    e = np.where(mask, np.exp(zm - np.where(np.isfinite(top), top, 0.0)), 0.0)
    tot = e.sum(axis=axis, keepdims=True)
    return e / np.where(tot > 0, tot, 1.0)


def full_bandwidth(logits: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``actions.bandwidth = full``: the K bandwidth logits (..., K) softmaxed over the links that
    carry a part, so sum_k b_ik = 1 wherever a part is offloaded (0 elsewhere). C4 allows less, but
    here nothing gains from unused bandwidth: a faster upload is both quicker and cheaper."""
    return masked_softmax(logits, used)


def proportional_cpu_request(split: np.ndarray, size: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """``actions.cpu = proportional``: w_ik = the compute cycles CV i sends to RSU k over all cycles
    sent to RSU k, so sum_i w_ik = 1 at every RSU that gets work and a CV's share follows its work,
    not requests it cannot see. Co-processing cycles (InstrT) are left out: the mode is chosen
    after the allocation. split (E, I, K+1), size and intensity (E, I) -> (E, I, K)."""
    cycles = split[..., 1:] * (size * intensity)[..., None]
    total = cycles.sum(axis=-2, keepdims=True)
    return np.where(total > 0, cycles / np.where(total > 0, total, 1.0), 0.0)


def start_of_slot_wait(p: ModelParams, state: QueueState) -> np.ndarray:
    """W_k (E, K) that the balanced split plans with: Little's law over the window as it stands
    when the slot starts (the slot's own arrivals are not known yet; :func:`slot` then includes them)."""
    return littles_law_delay(p.tau, state.hist_q_rsu, state.hist_lam_rsu)


@dataclass
class PartDelayLines:
    """A part's delay at share l on each link: T_ik(l) = min(data0 + data1 l, instr0 + instr1 l)
    (DataT and InstrT, the faster wins, eqs. 7-14 and 19), arrays (E, I, K)."""

    data0: np.ndarray
    data1: np.ndarray
    instr0: np.ndarray
    instr1: np.ndarray

    def delay(self, share: np.ndarray) -> np.ndarray:
        return np.minimum(self.data0 + self.data1 * share, self.instr0 + self.instr1 * share)

    def share(self, T: np.ndarray) -> np.ndarray:
        """The share that finishes at time T (E, I, 1): the inverse of :meth:`delay`, floored at 0."""
        return np.maximum(0.0, np.maximum((T - self.data0) / self.data1, (T - self.instr0) / self.instr1))


def part_delay_lines(p: ModelParams, tasks: Tasks, rate: np.ndarray, cpu: np.ndarray,
                     wait_rsu: np.ndarray) -> PartDelayLines:
    """DataT: W_k + l (G/R + G I_task/F); InstrT: W_k + G_ins/R + l G (I_co + I_task)/F."""
    G = tasks.size[..., None]
    inv_r = 1.0 / np.maximum(rate, _EPS)
    inv_f = 1.0 / np.maximum(cpu, _EPS)
    w = np.broadcast_to(wait_rsu[..., None, :], rate.shape)
    tiny = 1e-300  # slopes stay positive so that the inverse exists
    return PartDelayLines(
        data0=w, data1=np.maximum(G * (inv_r + tasks.intensity[..., None] * inv_f), tiny),
        instr0=w + tasks.instr[..., None] * inv_r,
        instr1=np.maximum(G * (tasks.co_intensity[..., None] + tasks.intensity[..., None]) * inv_f, tiny))


def proportional_part_delay_lines(p: ModelParams, tasks: Tasks, rate: np.ndarray, split: np.ndarray,
                                  wait_rsu: np.ndarray) -> PartDelayLines:
    """The same lines under ``cpu = proportional``, exact in a CV's own share given the others':
    F_ik = cap c_ik / C_k makes the compute delay C_k / cap = (C_k^-i + l G I_task) / cap and the
    InstrT co-processing delay I_co C_k / (cap I_task), both affine in l (C_k^-i: the others' cycles)."""
    G, I, Ico = tasks.size[..., None], tasks.intensity[..., None], tasks.co_intensity[..., None]
    cycles = split[..., 1:] * G * I
    other = (cycles.sum(axis=-2, keepdims=True) - cycles) / p.rsu_capacity  # s
    inv_r = 1.0 / np.maximum(rate, _EPS)
    w = np.broadcast_to(wait_rsu[..., None, :], rate.shape)
    return PartDelayLines(data0=w + other, data1=G * (inv_r + I / p.rsu_capacity),
                          instr0=w + tasks.instr[..., None] * inv_r + other * (1.0 + Ico / I),
                          instr1=G * (Ico + I) / p.rsu_capacity)


def balance_parts(lines: PartDelayLines, offload: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Split ``offload`` (E, I) over the ``chosen`` links (E, I, K) so that every part finishes at
    the same time T: sum_k l_k(T) = offload with l_k(T) the inverse of the part's delay.

    sum_k l_k(T) is convex, increasing and piecewise linear in T (each l_k is a max of affine
    pieces), so Newton's method started to the right of the root moves monotonically onto it and
    is exact after at most one step per breakpoint (3K + 1 steps). Links whose wait alone exceeds T
    get 0. Returns the shares (E, I, K), summing to ``offload``."""
    K = chosen.shape[-1]
    L = offload[..., None]
    # Right of the root: every chosen link alone could take all of it by then.
    T = np.where(chosen, lines.delay(L), -np.inf).max(axis=-1, keepdims=True)
    T = np.where(np.isfinite(T), T, 0.0)
    for _ in range(3 * K + 1):
        l_data, l_instr = (T - lines.data0) / lines.data1, (T - lines.instr0) / lines.instr1
        share = np.where(chosen, np.maximum(0.0, np.maximum(l_data, l_instr)), 0.0)
        slope = np.where(chosen & (np.maximum(l_data, l_instr) > 0),
                         np.where(l_instr > l_data, 1.0 / lines.instr1, 1.0 / lines.data1), 0.0)
        f, df = share.sum(-1, keepdims=True) - L, slope.sum(-1, keepdims=True)
        T = np.where((f > 0) & (df > 0), T - f / np.where(df > 0, df, 1.0), T)
    share = np.where(chosen, lines.share(T), 0.0)
    tot = share.sum(-1, keepdims=True)
    return np.where(tot > 0, share * L / np.where(tot > 0, tot, 1.0), 0.0)


def part_spread(rsu_delay: np.ndarray, offloaded: np.ndarray) -> np.ndarray:
    """(max - min) / max of a task's RSU part delays (E, I); NaN where fewer than two parts."""
    hi = np.where(offloaded, rsu_delay, -np.inf).max(-1)
    lo = np.where(offloaded, rsu_delay, np.inf).min(-1)
    two = offloaded.sum(-1) >= 2
    return np.where(two, (hi - lo) / np.where(two & (hi > 0), hi, 1.0), np.nan)


def project_actions(p: ModelParams, raw: np.ndarray, covered: np.ndarray, active: np.ndarray | None = None,
                    tasks: Tasks | None = None, spec_eff: np.ndarray | None = None,
                    wait_rsu: np.ndarray | None = None, passes: int | None = None) -> Decision:
    """The environment's projection under ``p``'s ``actions.*`` options (:func:`project` when they
    are all the paper's). ``tasks``, ``spec_eff`` (E, I, K) and ``wait_rsu`` (E, K) are needed by
    ``cpu = proportional`` (tasks) and ``split = balanced`` (all three).

    Balanced: the paper's split decides which RSUs are used (parts above ``min_split_share``) and
    the local share; the rest is split by :func:`balance_parts` with the rates and CPU the decision
    gives. Parts that come out below ``min_split_share`` are dropped and the rest rebalanced, and
    under ``proportional`` CPU (which follows the shares) the split and the allocation are iterated,
    ``passes`` times in all (default 3, or 12 under ``proportional``, whose CPU couples the CVs at an
    RSU: each pass is every CV's exact answer to the others' previous shares, a fixed-point iteration);
    :func:`part_spread` measures what is left.
    """
    if p.paper_actions:
        return project(p, raw, covered, active)
    if (p.split_mode == "balanced" and (tasks is None or spec_eff is None or wait_rsu is None)) or \
            (p.cpu_mode == "proportional" and tasks is None):
        raise ValueError("project_actions: split=balanced needs tasks, spec_eff and wait_rsu; "
                         "cpu=proportional needs tasks")
    lay = ActionLayout(p.n_rsus)
    raw = _clip_raw(raw)
    split = _split_from_logits(p, raw[..., lay.split], covered, active)
    request = 1.0 / (1.0 + np.exp(-raw[..., lay.cpu]))
    paper_bw = _softmax(raw[..., lay.bandwidth])[..., : p.n_rsus]

    def decide(split: np.ndarray) -> Decision:
        used = split[..., 1:] > 0
        bw = full_bandwidth(raw[..., lay.bandwidth_rsu], used) if p.bandwidth_mode == "full" else paper_bw
        w = proportional_cpu_request(split, tasks.size, tasks.intensity) if p.cpu_mode == "proportional" \
            else request
        return make_decision(p, split, bw, w)

    dec = decide(split)
    if p.split_mode != "balanced":
        return dec
    local = split[..., :1]
    offload = 1.0 - local[..., 0]
    chosen = split[..., 1:] > 0
    if passes is None:
        passes = 12 if p.cpu_mode == "proportional" else 3
    for _ in range(passes):
        rate = p.sensing_gain * dec.bandwidth * p.bandwidth * spec_eff
        lines = proportional_part_delay_lines(p, tasks, rate, dec.split, wait_rsu) \
            if p.cpu_mode == "proportional" else part_delay_lines(p, tasks, rate, dec.cpu, wait_rsu)
        parts = balance_parts(lines, offload, chosen)
        # A part too small to be worth a link is dropped (the largest always stays).
        chosen = chosen & ((parts >= p.min_split_share) | (parts == parts.max(-1, keepdims=True)))
        parts = np.where(chosen, parts, 0.0)
        tot = parts.sum(-1, keepdims=True)
        parts = np.where(tot > 0, parts * offload[..., None] / np.where(tot > 0, tot, 1.0), 0.0)
        dec = decide(np.concatenate([local, parts], axis=-1))
    return dec


# ---------------------------------------------------------------------------
# Queues (section 6)

@dataclass
class QueueState:
    """Backlogs (cycles), energy queues (J) and Little's-law windows."""

    q_loc: np.ndarray        # (E, I)
    q_rsu: np.ndarray        # (E, K)
    energy: np.ndarray       # (E, I), Y_i
    hist_q_loc: np.ndarray   # (E, m, I)
    hist_lam_loc: np.ndarray  # (E, m, I)
    hist_q_rsu: np.ndarray   # (E, m, K)
    hist_lam_rsu: np.ndarray  # (E, m, K)
    t: int = 0               # slots since the episode started (all environments step in lockstep)

    @classmethod
    def zeros(cls, n_envs: int, n_cvs: int, n_rsus: int, window: int) -> QueueState:
        z = np.zeros
        return cls(z((n_envs, n_cvs)), z((n_envs, n_rsus)), z((n_envs, n_cvs)),
                   z((n_envs, window, n_cvs)), z((n_envs, window, n_cvs)),
                   z((n_envs, window, n_rsus)), z((n_envs, window, n_rsus)), 0)

    def copy(self) -> QueueState:
        return replace(self, **{f.name: getattr(self, f.name).copy() for f in fields(self) if f.name != "t"})


def littles_law_delay(tau: float, hist_q: np.ndarray, hist_lam: np.ndarray) -> np.ndarray:
    """W = tau * mean(Q) / mean(lambda) over the window (axis -2); 0 without arrivals."""
    q = hist_q.sum(axis=-2)
    lam = hist_lam.sum(axis=-2)
    return np.where(lam > 0, tau * q / np.where(lam > 0, lam, 1.0), 0.0)


# ---------------------------------------------------------------------------
# One slot (sections 5-7)

@dataclass
class SlotResult:
    """Everything a slot computes. Shapes: (E, I, K) per link, (E, I) per CV, (E, K) per RSU, (E,) per system."""

    rate: np.ndarray            # R_ik, bit/s (0 where unused)
    instr_mode: np.ndarray      # eta_ik: True = InstrT (only meaningful where offloaded)
    offloaded: np.ndarray       # l_ik > 0
    upload_delay: np.ndarray    # D_up
    compute_delay: np.ndarray   # D_comp at the RSU
    local_delay: np.ndarray     # T_loc (incl. queueing)
    rsu_delay: np.ndarray       # T_ik (incl. queueing)
    wait_loc: np.ndarray        # W_loc (E, I)
    wait_rsu: np.ndarray        # W_rsu (E, K)
    delay: np.ndarray           # T_i
    energy: np.ndarray          # E_i
    cost: np.ndarray            # C_i, normalised
    deadline_miss: np.ndarray   # T_i > T_max
    arrivals_loc: np.ndarray    # lambda_loc (E, I), cycles
    arrivals_rsu: np.ndarray    # lambda_ik (E, I, K), cycles
    drift_loc: np.ndarray       # (E, I), normalised
    drift_rsu: np.ndarray       # (E, K)
    drift_energy: np.ndarray    # (E, I)
    system_cost: np.ndarray     # (E,)
    reward: np.ndarray          # R(t), (E,)
    agent_reward: np.ndarray    # r_i, (E, I), sums to R(t)
    active: np.ndarray          # (E, I)


def report_cost(p: ModelParams, report_bits: float, spec_eff_prev: np.ndarray, covered: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The task-descriptor report of ``twin.info: reported`` (E, I): delay and energy of each CV's.

    Before the decision each CV sends ``report_bits`` to the twin over its V2I link, with the CV's whole
    bandwidth (no part is being uploaded yet) on the covering RSU with the best spectral efficiency of
    the previous slot (the current fading is not measured yet): delay G_rep / (Theta B max_k se_prev),
    energy P_tx times that delay. A CV no RSU covers sends nothing and pays nothing."""
    se = np.where(covered, spec_eff_prev, 0.0).max(axis=-1)
    sent = covered.any(axis=-1)
    rate = p.sensing_gain * p.bandwidth * np.where(sent, np.maximum(se, _EPS), 1.0)
    delay = np.where(sent, report_bits / rate, 0.0)
    return delay, p.tx_power * delay


def slot(p: ModelParams, state: QueueState, tasks: Tasks, cv_cpu: np.ndarray, spec_eff: np.ndarray,
         decision: Decision, active: np.ndarray | None = None,
         signalling: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[SlotResult, QueueState]:
    """One slot: rates, modes, delays, energies, cost and reward; queues move to t+1.

    ``spec_eff`` is log2(1 + SNR) per link (E, I, K); ``cv_cpu`` is C_i (E, I).
    Inactive CVs have no task: no arrivals, no cost, no energy. ``signalling`` (delay s, energy J,
    each (E, I)): what each CV spent before the decision (:func:`report_cost`), added to its task's
    delay and energy (so to its cost, deadline and energy queue).
    """
    if active is None:
        active = np.ones(cv_cpu.shape, dtype=bool)
    act = active.astype(float)
    G = tasks.size * act
    split, F = decision.split, decision.cpu
    l_loc, l_rsu = split[..., 0], split[..., 1:]
    used = (l_rsu > 0) & active[..., None]
    Gk = (l_rsu * G[..., None])  # bits offloaded to each RSU

    # Rates (1) and the two ways to upload (7)-(11); the twin picks the faster (12), (22).
    rate = p.sensing_gain * decision.bandwidth * p.bandwidth * spec_eff
    safe_rate = np.where(used, np.maximum(rate, _EPS), 1.0)
    safe_F = np.where(used, np.maximum(F, _EPS), 1.0)
    instr_bits = tasks.instr[..., None]
    d_data = Gk / safe_rate
    co_cycles = Gk * tasks.co_intensity[..., None]
    d_instr = instr_bits / safe_rate + co_cycles / safe_F
    instr = used & (d_instr < d_data)
    d_up = np.where(used, np.where(instr, d_instr, d_data), 0.0)
    e_up = np.where(instr, p.tx_power * instr_bits / safe_rate + p.kappa_rsu * co_cycles * F**2,
                    p.tx_power * d_data)
    e_up = np.where(used, e_up, 0.0)

    # RSU compute (13), (14) and local compute (5), (6).
    rsu_cycles = Gk * tasks.intensity[..., None]
    d_comp = np.where(used, rsu_cycles / safe_F, 0.0)
    e_comp = np.where(used, p.kappa_rsu * rsu_cycles * F**2, 0.0)
    loc_cycles = l_loc * G * tasks.intensity
    d_loc = loc_cycles / cv_cpu
    e_loc = p.kappa_cv * loc_cycles * cv_cpu**2

    # Arrivals (16), (17) and Little's-law windows (18), slot t included.
    lam_loc = loc_cycles
    lam_rsu = np.where(used, Gk * (tasks.intensity[..., None] + instr * tasks.co_intensity[..., None]), 0.0)
    lam_rsu_total = lam_rsu.sum(axis=-2)  # (E, K)
    served_rsu = np.where(used, F, 0.0).sum(axis=-2) * p.tau
    j = state.t % p.window
    new = state.copy()
    new.hist_q_loc[:, j], new.hist_lam_loc[:, j] = state.q_loc, lam_loc
    new.hist_q_rsu[:, j], new.hist_lam_rsu[:, j] = state.q_rsu, lam_rsu_total
    w_loc = littles_law_delay(p.tau, new.hist_q_loc, new.hist_lam_loc)
    w_rsu = littles_law_delay(p.tau, new.hist_q_rsu, new.hist_lam_rsu)

    # Latency (19), (21) and energy (23).
    t_loc = np.where(l_loc > 0, d_loc + w_loc, 0.0) * act
    t_rsu = np.where(used, d_up + d_comp + w_rsu[:, None, :], 0.0)
    delay = np.maximum(t_loc, t_rsu.max(axis=-1))
    energy = (e_loc + (e_up + e_comp).sum(axis=-1)) * act
    if signalling is not None:
        delay = delay + signalling[0] * act
        energy = energy + signalling[1] * act
    miss = (delay > tasks.deadline) & active

    # Normalised cost (24), (25).
    cost = (p.alpha * delay / p.T_ref + (1.0 - p.alpha) * energy / p.E_ref + p.deadline_penalty * miss) * act
    system_cost = cost.sum(axis=-1)

    # Drift terms of (44) in normalised units, with queues at the start of the slot.
    budget = p.energy_budget
    drift_loc = (state.q_loc / p.W_ref) * (lam_loc - cv_cpu * p.tau) / p.W_ref
    drift_rsu = (state.q_rsu / p.W_ref) * (lam_rsu_total - served_rsu) / p.W_ref
    drift_energy = (state.energy / p.E_ref) * (energy - budget) / p.E_ref
    reward = -(p.V * system_cost + drift_loc.sum(-1) + drift_rsu.sum(-1) + drift_energy.sum(-1))

    # Per-agent split: own terms plus each RSU term in proportion to what the agent sent there.
    n_cvs = cost.shape[-1]
    share = np.where(lam_rsu_total[:, None, :] > 0,
                     lam_rsu / np.where(lam_rsu_total > 0, lam_rsu_total, 1.0)[:, None, :], 1.0 / n_cvs)
    agent_reward = -(p.V * cost + drift_loc + drift_energy + (share * drift_rsu[:, None, :]).sum(-1))

    # Queues move to t+1.
    new.q_loc = np.maximum(state.q_loc - cv_cpu * p.tau + lam_loc, 0.0)
    new.q_rsu = np.maximum(state.q_rsu - served_rsu + lam_rsu_total, 0.0)
    new.energy = np.maximum(state.energy - budget + energy, 0.0)
    new.t = state.t + 1

    result = SlotResult(
        rate=np.where(used, rate, 0.0), instr_mode=instr, offloaded=used, upload_delay=d_up,
        compute_delay=d_comp, local_delay=t_loc, rsu_delay=t_rsu, wait_loc=w_loc, wait_rsu=w_rsu,
        delay=delay, energy=energy, cost=cost, deadline_miss=miss, arrivals_loc=lam_loc,
        arrivals_rsu=lam_rsu, drift_loc=drift_loc, drift_rsu=drift_rsu, drift_energy=drift_energy,
        system_cost=system_cost, reward=reward, agent_reward=agent_reward, active=active)
    return result, new
