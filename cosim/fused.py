"""The model step fused into numba kernels: the fast path of :class:`cosim.env.BatchCoSim`.

:mod:`cosim.model` stays the readable reference (the worked-slot tests pin it);
this module computes the same numbers loop by loop, without the temporaries
numpy needs for every masked expression: the action projection (C4-C6), the
slot (rates, modes, delays, energies, cost, reward, Little's-law windows,
queues) and, at the start of the next slot, the channel and the twin's
observation. ``tests/test_fused.py`` checks that both agree within 1e-9
relative on random slots (inactive CVs, uncovered RSUs, non-empty queues).

It is used automatically when numba is installed (``pip install dtcosim[fast]``)
and never otherwise; ``BatchCoSim.fused = False`` (class or instance) selects the
numpy path. Kernels are compiled once and cached on disk (``cache=True``, in
``__pycache__`` beside this file or numba's cache directory), so only the very
first start pays the compilation (see the README's Speed section for its cost).

Random draws (tasks, fading, the twin's noise) stay in numpy, in the same order,
so both paths see the same random streams.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import model as M

try:  # numba is an optional extra: everything here has a numpy reference in cosim.model
    import numba
    from numba import njit
    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None
    AVAILABLE = False

    def njit(*args: Any, **kwargs: Any):  # type: ignore[no-redef]
        """Without numba the kernels are plain (slow) Python; nothing selects them then."""
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


_EPS = M._EPS
_LOGIT_CLIP = M._LOGIT_CLIP

# Indices into the scalar parameter vector (see :func:`param_vector`).
(P_SG, P_BW, P_TX, P_NOISE, P_PL0, P_PLS, P_KCV, P_KRSU, P_CAP, P_MINRSU, P_TAU, P_V, P_ALPHA, P_BUDGET,
 P_DLP, P_MINBW, P_MINSPLIT, P_TREF, P_EREF, P_WREF, P_WINDOW, N_PARAMS) = range(22)


def param_vector(p: M.ModelParams) -> np.ndarray:
    """The scalar parameters of :class:`cosim.model.ModelParams` as one float array for the kernels."""
    v = np.zeros(N_PARAMS)
    v[[P_SG, P_BW, P_TX, P_NOISE, P_PL0, P_PLS, P_KCV, P_KRSU, P_CAP, P_MINRSU, P_TAU, P_V, P_ALPHA, P_BUDGET,
       P_DLP, P_MINBW, P_MINSPLIT, P_TREF, P_EREF, P_WREF, P_WINDOW]] = [
        p.sensing_gain, p.bandwidth, p.tx_power, p.noise, p.pathloss_db_1m, p.pathloss_slope_db, p.kappa_cv,
        p.kappa_rsu, p.rsu_capacity, p.min_rsu_share, p.tau, p.V, p.alpha, p.energy_budget, p.deadline_penalty,
        p.min_bandwidth_share, p.min_split_share, p.T_ref, p.E_ref, p.W_ref, p.window]
    return v


# ---------------------------------------------------------------------------
# Decisions (model.make_decision, model.project) for one environment

@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget_row(x, used, floor, budget, out, e, i):
    """model._floor_within_budget along the last axis of row (e, i)."""
    n = 0
    total = 0.0
    for k in range(x.shape[2]):
        if used[i, k]:
            n += 1
            total += max(x[e, i, k], floor)
    scale = 1.0
    if total > budget:
        room = total - n * floor
        scale = (budget - n * floor) / (room if room > 0 else 1.0)
    for k in range(x.shape[2]):
        out[e, i, k] = floor + (max(x[e, i, k], floor) - floor) * scale if used[i, k] else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def make_decision_env(pv, split, bandwidth, request, b_out, w_out, F_out, used, tmp, e):
    """model.make_decision for environment (or candidate) ``e``: split (., I, K+1), bandwidth and
    request (., I, K) -> b_out, w_out, F_out (., I, K); ``used`` (I, K) bool and ``tmp`` (I,) are scratch.
    (Whole arrays and an index rather than slices: a numba slice costs reference counting.)"""
    I, K = bandwidth.shape[1], bandwidth.shape[2]
    for i in range(I):
        for k in range(K):
            used[i, k] = split[e, i, k + 1] > 0
        _floor_budget_row(bandwidth, used, pv[P_MINBW], 1.0, b_out, e, i)
        for k in range(K):
            w_out[e, i, k] = request[e, i, k] if used[i, k] else 0.0
    cap = pv[P_CAP]
    for k in range(K):  # allocate_cpu: per RSU, over the CVs
        load = 0.0
        for i in range(I):
            load += w_out[e, i, k]
        load = max(1.0, load)
        for i in range(I):
            tmp[i] = cap * w_out[e, i, k] / load
        # floor within budget over the CV axis
        n = 0
        total = 0.0
        for i in range(I):
            if used[i, k]:
                n += 1
                total += max(tmp[i], pv[P_MINRSU])
        scale = 1.0
        floor = pv[P_MINRSU]
        if total > cap:
            room = total - n * floor
            scale = (cap - n * floor) / (room if room > 0 else 1.0)
        for i in range(I):
            F_out[e, i, k] = floor + (max(tmp[i], floor) - floor) * scale if used[i, k] else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def _drop_small_parts_row(s, min_share, e, i):
    """model.drop_small_parts on row (e, i)."""
    if min_share <= 0:
        return
    n = s.shape[2]
    m = s[e, i, 0]
    for k in range(1, n):
        m = max(m, s[e, i, k])
    tot = 0.0
    for k in range(n):
        if not (s[e, i, k] >= min_share or s[e, i, k] == m):
            s[e, i, k] = 0.0
        tot += s[e, i, k]
    for k in range(n):
        s[e, i, k] = s[e, i, k] / tot


@njit(cache=True, error_model="numpy", inline="always")
def _project_env(pv, ez, covered, active, sp0, bw0, bw1, cpu0, split, bw, req, e):
    """model.project's per-CV part (softmaxes, masks, dropped parts, sigmoids) for environment ``e``.

    ``ez`` = exp(raw clipped to +-50), computed by numpy in one vectorised pass (so no softmax
    needs its max subtracted: e^50 times K+1 cannot overflow)."""
    I, K = covered.shape[1], covered.shape[2]
    for i in range(I):
        tot = 0.0
        for k in range(K + 1):
            tot += ez[e, i, sp0 + k]
        split[e, i, 0] = ez[e, i, sp0] / tot
        for k in range(K):
            split[e, i, k + 1] = ez[e, i, sp0 + k + 1] / tot * covered[e, i, k]
        if not active[e, i]:
            split[e, i, 0] = 1.0
            for k in range(K):
                split[e, i, k + 1] = 0.0
        tot = 0.0
        for k in range(K + 1):
            tot += split[e, i, k]
        for k in range(K + 1):
            split[e, i, k] = split[e, i, k] / tot
        _drop_small_parts_row(split, pv[P_MINSPLIT], e, i)
        tot = 0.0
        for k in range(bw1 - bw0):
            tot += ez[e, i, bw0 + k]
        for k in range(K):
            bw[e, i, k] = ez[e, i, bw0 + k] / tot
        for k in range(K):
            req[e, i, k] = 1.0 / (1.0 + 1.0 / ez[e, i, cpu0 + k])


# ---------------------------------------------------------------------------
# One slot (model.slot)

@njit(cache=True, error_model="numpy")
def slot_env(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
             q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j, e_fixed, n0, n1,
             rate, instr, used, d_up, d_comp, t_loc, t_rsu, w_loc, w_rsu, delay, energy, cost, miss,
             lam_loc, lam_rsu, drift_loc, drift_rsu, drift_energy, agent_reward, nq_loc, nq_rsu, n_energy,
             system_cost_out, reward_out):
    """model.slot for the decisions n0..n1-1 (split, b, F and every output indexed [n]), each in
    environment ``e_fixed`` (the optimiser's candidates) or, if that is < 0, in environment n (the slot's
    inputs and queues indexed [e]). The window row ``j`` is this slot's (not written here).
    One call for many rows: every call of a numba function costs reference counting of its arrays."""
    I, K = b.shape[1], b.shape[2]
    lam_tot, served = np.empty(K), np.empty(K)
    m = hq_loc.shape[1]
    tau = pv[P_TAU]
    P, kr, kc = pv[P_TX], pv[P_KRSU], pv[P_KCV]
    W, Er = pv[P_WREF], pv[P_EREF]
    budget = pv[P_BUDGET]
    for n in range(n0, n1):
        e = n if e_fixed < 0 else e_fixed
        for k in range(K):
            lam_tot[k] = 0.0
            served[k] = 0.0
        for i in range(I):
            a = active[e, i]
            act = 1.0 if a else 0.0
            G = size[e, i] * act
            e_off = 0.0
            for k in range(K):
                u = split[n, i, k + 1] > 0 and a
                used[n, i, k] = u
                Gk = split[n, i, k + 1] * G
                r = pv[P_SG] * b[n, i, k] * pv[P_BW] * se[e, i, k]
                f = F[n, i, k]
                safe_rate = max(r, _EPS) if u else 1.0
                safe_F = max(f, _EPS) if u else 1.0
                d_data = Gk / safe_rate
                co_cycles = Gk * co_int[e, i]
                d_instr = instr_bits[e, i] / safe_rate + co_cycles / safe_F
                ins = u and d_instr < d_data
                instr[n, i, k] = ins
                rate[n, i, k] = r if u else 0.0
                d_up[n, i, k] = (d_instr if ins else d_data) if u else 0.0
                e_up = 0.0
                if u:
                    if ins:
                        e_up = P * instr_bits[e, i] / safe_rate + kr * co_cycles * f ** 2
                    else:
                        e_up = P * d_data
                rsu_cycles = Gk * intensity[e, i]
                d_comp[n, i, k] = rsu_cycles / safe_F if u else 0.0
                e_comp = kr * rsu_cycles * f ** 2 if u else 0.0
                e_off += e_up + e_comp
                lam = Gk * (intensity[e, i] + (1.0 if ins else 0.0) * co_int[e, i]) if u else 0.0
                lam_rsu[n, i, k] = lam
                lam_tot[k] += lam
                served[k] += f if u else 0.0
            loc_cycles = split[n, i, 0] * G * intensity[e, i]
            lam_loc[n, i] = loc_cycles
            t_loc[n, i] = loc_cycles / cv_cpu[e, i]  # + W_loc below
            energy[n, i] = (kc * loc_cycles * cv_cpu[e, i] ** 2 + e_off) * act
        # Little's-law windows with this slot in row j.
        for i in range(I):
            qs = 0.0
            ls = 0.0
            for r in range(m):
                qs += q_loc[e, i] if r == j else hq_loc[e, r, i]
                ls += lam_loc[n, i] if r == j else hl_loc[e, r, i]
            w_loc[n, i] = tau * qs / ls if ls > 0 else 0.0
        drift_sum = 0.0
        for k in range(K):
            served[k] = served[k] * tau
            qs = 0.0
            ls = 0.0
            for r in range(m):
                qs += q_rsu[e, k] if r == j else hq_rsu[e, r, k]
                ls += lam_tot[k] if r == j else hl_rsu[e, r, k]
            w_rsu[n, k] = tau * qs / ls if ls > 0 else 0.0
            d = (q_rsu[e, k] / W) * (lam_tot[k] - served[k]) / W
            drift_rsu[n, k] = d
            drift_sum += d
            nq_rsu[n, k] = max(q_rsu[e, k] - served[k] + lam_tot[k], 0.0)
        system_cost = 0.0
        for i in range(I):
            a = active[e, i]
            act = 1.0 if a else 0.0
            t_l = (t_loc[n, i] + w_loc[n, i] if split[n, i, 0] > 0 else 0.0) * act
            t_loc[n, i] = t_l
            dmax = t_l
            for k in range(K):
                tr = d_up[n, i, k] + d_comp[n, i, k] + w_rsu[n, k] if used[n, i, k] else 0.0
                t_rsu[n, i, k] = tr
                dmax = max(dmax, tr)
            delay[n, i] = dmax
            ms = dmax > deadline[e, i] and a
            miss[n, i] = ms
            en = energy[n, i]
            c = (pv[P_ALPHA] * dmax / pv[P_TREF] + (1.0 - pv[P_ALPHA]) * en / Er
                 + pv[P_DLP] * (1.0 if ms else 0.0)) * act
            cost[n, i] = c
            system_cost += c
            dl = (q_loc[e, i] / W) * (lam_loc[n, i] - cv_cpu[e, i] * tau) / W
            de = (energy_q[e, i] / Er) * (en - budget) / Er
            drift_loc[n, i] = dl
            drift_energy[n, i] = de
            drift_sum += dl + de
            share_term = 0.0
            for k in range(K):
                sh = lam_rsu[n, i, k] / lam_tot[k] if lam_tot[k] > 0 else 1.0 / I
                share_term += sh * drift_rsu[n, k]
            agent_reward[n, i] = -(pv[P_V] * c + dl + de + share_term)
            nq_loc[n, i] = max(q_loc[e, i] - cv_cpu[e, i] * tau + lam_loc[n, i], 0.0)
            n_energy[n, i] = max(energy_q[e, i] - budget + en, 0.0)
        system_cost_out[n] = system_cost
        reward_out[n] = -(pv[P_V] * system_cost + drift_sum)


@njit(cache=True, error_model="numpy")
def _step_kernel(pv, ez, covered, active, sp0, bw0, bw1, cpu0, size, instr_bits, intensity, co_int, deadline,
                 cv_cpu, se, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, t):
    E, I, K = covered.shape
    m = hq_loc.shape[1]
    j = t % m
    split = np.empty((E, I, K + 1))
    bw_raw = np.empty((E, I, K))
    req = np.empty((E, I, K))
    b = np.empty((E, I, K))
    w = np.empty((E, I, K))
    F = np.empty((E, I, K))
    dec_used = np.empty((I, K), dtype=np.bool_)
    tmp = np.empty(I)
    rate, d_up, d_comp = np.empty((E, I, K)), np.empty((E, I, K)), np.empty((E, I, K))
    t_rsu, lam_rsu = np.empty((E, I, K)), np.empty((E, I, K))
    instr = np.empty((E, I, K), dtype=np.bool_)
    used = np.empty((E, I, K), dtype=np.bool_)
    t_loc, w_loc, delay, energy = np.empty((E, I)), np.empty((E, I)), np.empty((E, I)), np.empty((E, I))
    cost, lam_loc, drift_loc = np.empty((E, I)), np.empty((E, I)), np.empty((E, I))
    drift_energy, agent_reward = np.empty((E, I)), np.empty((E, I))
    nq_loc, n_energy = np.empty((E, I)), np.empty((E, I))
    miss = np.empty((E, I), dtype=np.bool_)
    w_rsu, drift_rsu, nq_rsu = np.empty((E, K)), np.empty((E, K)), np.empty((E, K))
    system_cost, reward = np.empty(E), np.empty(E)
    nhq_loc, nhl_loc, nhq_rsu, nhl_rsu = hq_loc.copy(), hl_loc.copy(), hq_rsu.copy(), hl_rsu.copy()
    for e in range(E):
        _project_env(pv, ez, covered, active, sp0, bw0, bw1, cpu0, split, bw_raw, req, e)
        make_decision_env(pv, split, bw_raw, req, b, w, F, dec_used, tmp, e)
    slot_env(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
             q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j, -1, 0, E,
             rate, instr, used, d_up, d_comp, t_loc, t_rsu, w_loc, w_rsu, delay, energy, cost, miss,
             lam_loc, lam_rsu, drift_loc, drift_rsu, drift_energy, agent_reward, nq_loc, nq_rsu,
             n_energy, system_cost, reward)
    for e in range(E):
        for i in range(I):
            nhq_loc[e, j, i] = q_loc[e, i]
            nhl_loc[e, j, i] = lam_loc[e, i]
        for k in range(K):
            nhq_rsu[e, j, k] = q_rsu[e, k]
            tot = 0.0
            for i in range(I):
                tot += lam_rsu[e, i, k]
            nhl_rsu[e, j, k] = tot
    return (split, b, w, F, rate, instr, used, d_up, d_comp, t_loc, t_rsu, w_loc, w_rsu, delay, energy, cost,
            miss, lam_loc, lam_rsu, drift_loc, drift_rsu, drift_energy, system_cost, reward, agent_reward,
            nq_loc, nq_rsu, n_energy, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu)


def project_and_slot(p: M.ModelParams, pv: np.ndarray, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
                     spec_eff: np.ndarray, raw: np.ndarray, covered: np.ndarray,
                     active: np.ndarray) -> tuple[M.Decision, M.SlotResult, M.QueueState]:
    """model.project then model.slot, fused: the same Decision, SlotResult and next QueueState."""
    lay = M.ActionLayout(p.n_rsus)
    ez = np.exp(np.clip(np.nan_to_num(np.asarray(raw, dtype=float)), -_LOGIT_CLIP, _LOGIT_CLIP))
    (split, b, w, F, rate, instr, used, d_up, d_comp, t_loc, t_rsu, w_loc, w_rsu, delay, energy, cost, miss,
     lam_loc, lam_rsu, drift_loc, drift_rsu, drift_energy, system_cost, reward, agent_reward, nq_loc, nq_rsu,
     n_energy, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu) = _step_kernel(
        pv, ez, covered, active, lay.split.start, lay.bandwidth.start,
        lay.bandwidth.stop, lay.cpu.start, tasks.size, tasks.instr, tasks.intensity, tasks.co_intensity,
        tasks.deadline, cv_cpu, spec_eff, state.q_loc, state.q_rsu, state.energy, state.hist_q_loc,
        state.hist_lam_loc, state.hist_q_rsu, state.hist_lam_rsu, state.t)
    decision = M.Decision(split=split, bandwidth=b, cpu_request=w, cpu=F)
    result = M.SlotResult(
        rate=rate, instr_mode=instr, offloaded=used, upload_delay=d_up, compute_delay=d_comp, local_delay=t_loc,
        rsu_delay=t_rsu, wait_loc=w_loc, wait_rsu=w_rsu, delay=delay, energy=energy, cost=cost, deadline_miss=miss,
        arrivals_loc=lam_loc, arrivals_rsu=lam_rsu, drift_loc=drift_loc, drift_rsu=drift_rsu,
        drift_energy=drift_energy, system_cost=system_cost, reward=reward, agent_reward=agent_reward, active=active)
    new = M.QueueState(nq_loc, nq_rsu, n_energy, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu, state.t + 1)
    return decision, result, new


# ---------------------------------------------------------------------------
# The start of a slot: channel (model.horizontal_distance ... spectral_efficiency) and the
# twin's observation (cosim.twin.DigitalTwin.observe with its true DT part)

# The observation blocks this kernel writes, in cosim.twin.ObsLayout's order; when the twin's
# layout differs (e.g. a new block), the numpy observation is used instead (see uses_fused_observation).
OBS_BLOCKS = ("task", "position", "velocity", "covered", "distance", "spec_eff", "queues", "rsu_capacity",
              "active", "dt_backlog", "dt_aggregate", "dt_distance_next")


def uses_fused_observation(twin: Any) -> bool:
    """The fused observation applies to the twin layout it was written for (``twin.view: paper``), and
    only then; every fidelity option on that layout (staleness and its carry, either sync-error kind,
    ``twin.hide``) is applied by the twin's own :meth:`~cosim.twin.DigitalTwin.seen_dt`, as on the numpy
    path. Any other layout (``twin.view: global``, whatever its ``twin.info``) gets the numpy observation."""
    blocks = getattr(twin.layout, "_blocks", None)
    return blocks is not None and tuple(n for n, _ in blocks()) == OBS_BLOCKS and \
        getattr(twin, "info", "oracle") == "oracle"


@njit(cache=True, error_model="numpy")
def _channel_obs_kernel(pv, rsu_xy, rsu_h, rsu_r, x, y, speed, heading, active, fading, size, instr_bits,
                        intensity, co_int, deadline, cv_cpu, q_loc, energy_q, q_rsu, scales, D):
    """Channel of every link and, if ``D`` > 0, the full observation with the true DT part (E, I, D).

    ``scales``: task upper ranges (5: G, G_ins, I_task, I_co, T_max), C_max, centre x/y, half width,
    speed scale, SPEC_EFF_SCALE, F_max."""
    E, I = x.shape
    K = rsu_xy.shape[0]
    covered = np.empty((E, I, K), dtype=np.bool_)
    d3 = np.empty((E, I, K))
    se = np.empty((E, I, K))
    with_obs = D > 0
    obs = np.zeros((E, I, D))
    tau = pv[P_TAU]
    W, Er = pv[P_WREF], pv[P_EREF]
    pl0 = pv[P_PL0] * math.log(10.0) / 10.0
    pls = pv[P_PLS] / 20.0
    for e in range(E):
        qsum, qmax = 0.0, -np.inf
        if with_obs:
            for k in range(K):
                qk = q_rsu[e, k] / W
                qsum += qk
                qmax = max(qmax, qk)
        for i in range(I):
            a = active[e, i]
            act = 1.0 if a else 0.0
            vx = speed[e, i] * math.cos(heading[e, i])
            vy = speed[e, i] * math.sin(heading[e, i])
            xn = x[e, i] + vx * tau
            yn = y[e, i] + vy * tau
            for k in range(K):
                dx = rsu_xy[k, 0] - x[e, i]
                dy = rsu_xy[k, 1] - y[e, i]
                h2 = dx * dx + dy * dy
                covered[e, i, k] = h2 <= rsu_r[k] ** 2 and a
                d2 = h2 + rsu_h[k] ** 2
                d3[e, i, k] = math.sqrt(d2)
                # 10^((a - b log10 d) / 10) = exp(a ln10 / 10 - (b / 20) ln d^2): one log, one exp
                g = math.exp(pl0 - pls * math.log(d2))
                snr = pv[P_TX] * fading[e, i, k] * g / pv[P_NOISE]
                se[e, i, k] = max(math.log2(1.0 + snr), _EPS)
            if not with_obs:
                continue
            obs[e, i, 0] = size[e, i] / scales[0] * act
            obs[e, i, 1] = instr_bits[e, i] / scales[1] * act
            obs[e, i, 2] = intensity[e, i] / scales[2] * act
            obs[e, i, 3] = co_int[e, i] / scales[3] * act
            obs[e, i, 4] = cv_cpu[e, i] / scales[5] * act
            obs[e, i, 5] = deadline[e, i] / scales[4] * act
            obs[e, i, 6] = (x[e, i] - scales[6]) / scales[8] * act
            obs[e, i, 7] = (y[e, i] - scales[7]) / scales[8] * act
            obs[e, i, 8] = vx / scales[9] * act
            obs[e, i, 9] = vy / scales[9] * act
            c = 10
            for k in range(K):
                obs[e, i, c + k] = 1.0 if covered[e, i, k] else 0.0
                obs[e, i, c + K + k] = d3[e, i, k] / rsu_r[k] * act
                obs[e, i, c + 2 * K + k] = se[e, i, k] / scales[10] * act
            c += 3 * K
            obs[e, i, c] = q_loc[e, i] / W
            obs[e, i, c + 1] = energy_q[e, i] / Er
            c += 2
            for k in range(K):
                obs[e, i, c + k] = pv[P_CAP] / scales[11]
            c += K
            obs[e, i, c] = act
            c += 1
            for k in range(K):  # DT part: backlogs, aggregate, predicted distance at t+1
                obs[e, i, c + k] = q_rsu[e, k] / W
            obs[e, i, c + K] = qsum
            obs[e, i, c + K + 1] = qsum / K
            obs[e, i, c + K + 2] = qmax
            c += K + 3
            for k in range(K):
                dx = rsu_xy[k, 0] - xn
                dy = rsu_xy[k, 1] - yn
                obs[e, i, c + k] = math.sqrt(dx * dx + dy * dy + rsu_h[k] ** 2) / rsu_r[k] * act
    return covered, d3, se, obs


def channel_and_observation(sim: Any) -> None:
    """BatchCoSim._begin_slot after the draws: sets covered, d3, spec_eff, obs and state on ``sim``.

    The twin's staleness, sync-error noise and hidden blocks are applied by DigitalTwin.seen_dt, the
    numpy path's code (same history, same generator); a twin layout this kernel does not know gets
    the numpy observation (uses_fused_observation)."""
    from .twin import SPEC_EFF_SCALE, area_frame
    p, mob, tk, q, twin = sim.params, sim.mob, sim.tasks, sim.queues, sim.twin
    fused_obs = uses_fused_observation(twin)
    pv = sim._fused_pv
    hi = lambda r: r[1] if r[1] > 0 else 1.0  # noqa: E731
    centre, half = area_frame(p)
    scales = np.array([hi(p.size_range), hi(p.instr_range), hi(p.intensity_range), hi(p.co_intensity_range),
                       hi(p.deadline_range), p.cv_cpu_range[1], centre[0], centre[1], half, twin.speed_scale,
                       SPEC_EFF_SCALE, p.rsu_cpu])
    covered, d3, se, full = _channel_obs_kernel(
        pv, p.rsu_xy, p.rsu_height, p.rsu_radius, mob.x, mob.y, mob.speed, mob.heading, mob.active, sim.fading,
        tk.size, tk.instr, tk.intensity, tk.co_intensity, tk.deadline, sim.cv_cpu, q.q_loc, q.energy, q.q_rsu,
        scales, twin.layout.dim if fused_obs else 0)
    sim.covered, sim.d3, sim.spec_eff = covered, d3, se
    if not fused_obs:
        sim.obs, sim.state = twin.observe(mob, tk, sim.cv_cpu, covered, d3, se, q)
        return
    E, I, D = full.shape
    dt = twin.layout.dt_slice
    seen = twin.seen_dt(full[..., dt].copy())  # staleness, sync error, hidden blocks: the numpy path's code
    state = full.astype(np.float32).reshape(E, I * D)
    if twin.enabled and twin.staleness == 0 and twin.sync_error <= 0 and not twin.hide:
        obs = state.reshape(E, I, D).copy()
    else:
        obs = full.copy()
        obs[..., dt] = seen
        obs = obs.astype(np.float32)
    sim.obs, sim.state = obs, state


# ---------------------------------------------------------------------------
# The per-slot optimiser's objective and its multi-start BFGS (cosim.optimizer), for one environment
#
# One environment's slot is compiled once into constants (SlotObjective: per-CV rows CI, per-RSU rows CK,
# per-link rate coefficients RC, the decision-free part of the drift f0), so that an evaluation is a
# single pass over the links (covered CV-RSU pairs, SP = SlotObjective.links: CSR lists by CV and by RSU)
# with no Little's-law window sums, and its intermediate values stay in a workspace for the analytic
# gradient; the workspace entries of uncovered pairs are 0 and never visited. model.slot stays the
# reference (tests/test_fused.py).

# Rows of CI (per CV), CK (per RSU), and of the workspaces WS (., I, K+1), WI (., I), WK (., K).
(CI_G, CI_GINS, CI_ITASK, CI_ICO, CI_CPU, CI_ACT, CI_QLOC, CI_QCLOC, CI_LCLOC, CI_Y, CI_DEADLINE, N_CI) = range(12)
(CK_Q, CK_QC, CK_LC, N_CK) = range(4)
(WS_SPLIT, WS_BW, WS_B, WS_W, WS_F, WS_TPART, WS_LAM, WS_GSPLIT, WS_GB, WS_GF, N_WS) = range(11)
(WI_LAMLOC, WI_TLOC, WI_WLOC, WI_ENERGY, WI_SLOW, WI_LS, N_WI) = range(7)
(WK_LAM, WK_SERVED, WK_W, WK_LS, WK_GLAM, WK_GSERVED, WK_GW, N_WK) = range(8)


@njit(cache=True, error_model="numpy", inline="always")
def _floor_shrink(WS, src, i, k_axis, idx, lo, hi, floor, budget, scale_in):
    """The shrink of _floor_budget's line: (factor on the part above the floor, the room above the floors,
    whether the line is over its budget with room to shrink)."""
    n = 0
    total = 0.0
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        if WS[WS_SPLIT, ii, kk + 1] > 0:
            n += 1
            total += max(WS[src, ii, kk] * scale_in, floor)
    scale, over, room = 1.0, False, 1.0
    if total > budget:
        room = total - n * floor
        over = room > 0
        scale = (budget - n * floor) / (room if over else 1.0)
    return scale, room, over


@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget(WS, src, dst, i, k_axis, idx, lo, hi, floor, budget, scale_in):
    """model._floor_within_budget along one line of WS: over the RSUs covering CV i (k_axis), or over the CVs
    that RSU i covers; the line's entries are idx[lo:hi] (the links, see SlotObjective). The source values
    are multiplied by ``scale_in`` first (the CPU allocation's capacity / load). An entry is used where its
    part of the split is > 0; entries off the line are 0 and stay so."""
    scale = _floor_shrink(WS, src, i, k_axis, idx, lo, hi, floor, budget, scale_in)[0]
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        WS[dst, ii, kk] = (floor + (max(WS[src, ii, kk] * scale_in, floor) - floor) * scale
                           if WS[WS_SPLIT, ii, kk + 1] > 0 else 0.0)


@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget_back(WS, src, gsrc, gdst, i, k_axis, idx, lo, hi, floor, budget, scale_in, LN):
    """Adjoint of _floor_budget: d f / d output in WS[gsrc] -> d f / d (scaled) source into LN[gdst, a] for
    the line's entries a. Entries held at the floor are constant there; above the budget the shrink factor
    depends on every used entry's floored value."""
    scale, room, over = _floor_shrink(WS, src, i, k_axis, idx, lo, hi, floor, budget, scale_in)
    s_ = 0.0
    if over:
        for t in range(lo, hi):
            a = idx[t]
            ii, kk = (i, a) if k_axis else (a, i)
            if WS[WS_SPLIT, ii, kk + 1] > 0:
                s_ += WS[gsrc, ii, kk] * (max(WS[src, ii, kk] * scale_in, floor) - floor)
        s_ *= scale / room
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        used = WS[WS_SPLIT, ii, kk + 1] > 0
        LN[gdst, a] = WS[gsrc, ii, kk] * scale - s_ if (used and WS[src, ii, kk] * scale_in > floor) else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def _drop_small_parts_links(s, min_share, i, cv_ptr, cv_k):
    """_drop_small_parts_row on WS's split row i, over the local part and the covered RSUs' (the others are 0)."""
    if min_share <= 0:
        return
    lo, hi = cv_ptr[i], cv_ptr[i + 1]
    m = s[WS_SPLIT, i, 0]
    for t in range(lo, hi):
        m = max(m, s[WS_SPLIT, i, cv_k[t] + 1])
    if not (s[WS_SPLIT, i, 0] >= min_share or s[WS_SPLIT, i, 0] == m):
        s[WS_SPLIT, i, 0] = 0.0
    tot = s[WS_SPLIT, i, 0]
    for t in range(lo, hi):
        c = cv_k[t] + 1
        if not (s[WS_SPLIT, i, c] >= min_share or s[WS_SPLIT, i, c] == m):
            s[WS_SPLIT, i, c] = 0.0
        tot += s[WS_SPLIT, i, c]
    s[WS_SPLIT, i, 0] = s[WS_SPLIT, i, 0] / tot
    for t in range(lo, hi):
        c = cv_k[t] + 1
        s[WS_SPLIT, i, c] = s[WS_SPLIT, i, c] / tot


@njit(cache=True, error_model="numpy")
def _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK):
    """-R(t) of one candidate from its exponentiated parameters th (I+1, 3K+1): the decode
    (cosim.optimizer.SlotProblem.decode), model.make_decision and model.slot's reward, with every
    intermediate the gradient needs left in WS, WB (used, InstrT), WI and WK.

    Only the links (the RSUs covering each active CV, ``SP``) are visited: O(links + I + K) per
    evaluation; the entries of the other (CV, RSU) pairs are 0 in the workspaces and stay so."""
    cv_ptr, cv_k, rsu_ptr, rsu_i = SP
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    tau, P, kr, kc = pv[P_TAU], pv[P_TX], pv[P_KRSU], pv[P_KCV]
    for i in range(I):  # split: masked softmax, small parts dropped; bandwidth over the RSUs that get a part
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        tot = th[i, sp0]
        WS[WS_SPLIT, i, 0] = tot
        for t in range(lo, hi):
            k = cv_k[t]
            v = th[i, sp0 + k + 1]
            WS[WS_SPLIT, i, k + 1] = v
            tot += v
        inv = 1.0 / (tot if tot > 0 else 1.0)
        WS[WS_SPLIT, i, 0] *= inv
        for t in range(lo, hi):
            WS[WS_SPLIT, i, cv_k[t] + 1] *= inv
        _drop_small_parts_links(WS, pv[P_MINSPLIT], i, cv_ptr, cv_k)
        tot = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            v = th[i, bw0 + k] if WS[WS_SPLIT, i, k + 1] > 0 else 0.0
            WS[WS_BW, i, k] = v
            tot += v
        inv = 1.0 / (tot if tot > 0 else 1.0)
        for t in range(lo, hi):
            WS[WS_BW, i, cv_k[t]] *= inv
        _floor_budget(WS, WS_BW, WS_B, i, True, cv_k, lo, hi, pv[P_MINBW], 1.0, 1.0)
    cap = pv[P_CAP]
    for k in range(K):  # RSU CPU: softmax over the CVs offloading there and the idle logit (row I), allocated
        lo, hi = rsu_ptr[k], rsu_ptr[k + 1]
        tot = th[I, cpu0 + k]
        for t in range(lo, hi):
            i = rsu_i[t]
            v = th[i, cpu0 + k] if WS[WS_SPLIT, i, k + 1] > 0 else 0.0
            WS[WS_W, i, k] = v
            tot += v
        load = 0.0
        inv = 1.0 / (tot if tot > 0 else 1.0)
        for t in range(lo, hi):
            i = rsu_i[t]
            WS[WS_W, i, k] *= inv
            load += WS[WS_W, i, k]
        _floor_budget(WS, WS_W, WS_F, k, False, rsu_i, lo, hi, pv[P_MINRSU], cap, cap / max(1.0, load))
    # The slot (model.slot): parts, then the Little's-law windows, delays, cost and drift-plus-penalty.
    f = f0
    for k in range(K):
        WK[WK_LAM, k] = 0.0
        WK[WK_SERVED, k] = 0.0
    for i in range(I):
        a = CI[CI_ACT, i] > 0
        G, Gins, Ik, co = CI[CI_G, i], CI[CI_GINS, i], CI[CI_ITASK, i], CI[CI_ICO, i]
        e_off = 0.0
        for t in range(cv_ptr[i], cv_ptr[i + 1]):
            k = cv_k[t]
            u = WS[WS_SPLIT, i, k + 1] > 0 and a
            WB[0, i, k] = u
            WB[1, i, k] = False
            WS[WS_TPART, i, k] = 0.0
            WS[WS_LAM, i, k] = 0.0
            if not u:
                continue
            Gk = WS[WS_SPLIT, i, k + 1] * G
            fF = WS[WS_F, i, k]
            ir = 1.0 / max(RC[i, k] * WS[WS_B, i, k], _EPS)
            iF = 1.0 / max(fF, _EPS)
            d_data = Gk * ir
            co_cycles = Gk * co
            d_instr = Gins * ir + co_cycles * iF
            rsu_cycles = Gk * Ik
            if d_instr < d_data:  # InstrT
                WB[1, i, k] = True
                WS[WS_TPART, i, k] = d_instr + rsu_cycles * iF
                e_off += P * Gins * ir + kr * (co_cycles + rsu_cycles) * fF * fF
                lam = Gk * (Ik + co)
            else:
                WS[WS_TPART, i, k] = d_data + rsu_cycles * iF
                e_off += P * d_data + kr * rsu_cycles * fF * fF
                lam = Gk * Ik
            WS[WS_LAM, i, k] = lam
            WK[WK_LAM, k] += lam
            WK[WK_SERVED, k] += fF
        loc = WS[WS_SPLIT, i, 0] * G * Ik
        WI[WI_LAMLOC, i] = loc
        WI[WI_ENERGY, i] = (kc * loc * CI[CI_CPU, i] ** 2 + e_off) * CI[CI_ACT, i]
    for k in range(K):
        ls = WK[WK_LAM, k] + CK[CK_LC, k]
        WK[WK_LS, k] = ls
        WK[WK_W, k] = CK[CK_QC, k] / ls if ls > 0 else 0.0
        f += CK[CK_Q, k] * (WK[WK_LAM, k] - WK[WK_SERVED, k] * tau)
    V, al, Tr, Er, dlp = pv[P_V], pv[P_ALPHA], pv[P_TREF], pv[P_EREF], pv[P_DLP]
    for i in range(I):
        WI[WI_SLOW, i] = -2.0
        if not CI[CI_ACT, i] > 0:
            continue
        ls = WI[WI_LAMLOC, i] + CI[CI_LCLOC, i]
        WI[WI_LS, i] = ls
        wl = CI[CI_QCLOC, i] / ls if ls > 0 else 0.0
        WI[WI_WLOC, i] = wl
        tl = WI[WI_LAMLOC, i] / CI[CI_CPU, i] + wl if WS[WS_SPLIT, i, 0] > 0 else 0.0
        WI[WI_TLOC, i] = tl
        dmax, slow = tl, -1
        for t in range(cv_ptr[i], cv_ptr[i + 1]):
            k = cv_k[t]
            if WB[0, i, k]:
                tr = WS[WS_TPART, i, k] + WK[WK_W, k]
                if tr > dmax:
                    dmax, slow = tr, k
        WI[WI_SLOW, i] = slow
        en = WI[WI_ENERGY, i]
        c = al * dmax / Tr + (1.0 - al) * en / Er + (dlp if dmax > CI[CI_DEADLINE, i] else 0.0)
        f += V * c + CI[CI_QLOC, i] * WI[WI_LAMLOC, i] + CI[CI_Y, i] * en
    return f if math.isfinite(f) else np.inf  # a NaN can never win


@njit(cache=True, error_model="numpy")
def _obj_backward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, WS, WB, WI, WK, LN, gth):
    """The gradient of _obj_forward's value with respect to the parameters (logits), derived by hand
    (reverse mode) from the intermediates _obj_forward left in the workspaces, into gth (I+1, 3K+1).
    Like the forward pass it visits the links only (gth's other entries stay 0).

    The objective is piecewise smooth: which parts are dropped or used, each part's mode (InstrT or
    DataT), the slowest part of each task (the max over parts) and deadline misses are held fixed,
    so on a kink this is the derivative of the piece the point lies on."""
    cv_ptr, cv_k, rsu_ptr, rsu_i = SP
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    tau, P, kr, kc = pv[P_TAU], pv[P_TX], pv[P_KRSU], pv[P_KCV]
    gd = pv[P_V] * pv[P_ALPHA] / pv[P_TREF]          # d f / d delay of an active CV
    ge = pv[P_V] * (1.0 - pv[P_ALPHA]) / pv[P_EREF]  # d f / d its energy, through the cost
    for k in range(K):
        WK[WK_GW, k] = 0.0
    for i in range(I):  # d f / d w_rsu: the tasks whose slowest part is at that RSU
        if WI[WI_SLOW, i] >= 0:
            WK[WK_GW, int(WI[WI_SLOW, i])] += gd
    for k in range(K):  # d f / d arrivals (drift and w_rsu = Qc / (arrivals + history)), d f / d F_ik
        WK[WK_GLAM, k] = CK[CK_Q, k] - (WK[WK_GW, k] * WK[WK_W, k] / WK[WK_LS, k] if WK[WK_LS, k] > 0 else 0.0)
        WK[WK_GSERVED, k] = -CK[CK_Q, k] * tau
        gth[I, cpu0 + k] = 0.0
    for i in range(I):
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        gth[i, sp0] = 0.0
        WS[WS_GSPLIT, i, 0] = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            gth[i, sp0 + k + 1] = 0.0
            gth[i, bw0 + k] = 0.0
            gth[i, cpu0 + k] = 0.0
            WS[WS_GSPLIT, i, k + 1] = 0.0
            WS[WS_GB, i, k] = 0.0
            WS[WS_GF, i, k] = 0.0
        if not CI[CI_ACT, i] > 0:
            continue
        G, Gins, Ik, co, cpu = CI[CI_G, i], CI[CI_GINS, i], CI[CI_ITASK, i], CI[CI_ICO, i], CI[CI_CPU, i]
        gE = ge + CI[CI_Y, i]
        slow = int(WI[WI_SLOW, i])
        g_tl = gd if (slow == -1 and WS[WS_SPLIT, i, 0] > 0) else 0.0
        ls = WI[WI_LS, i]
        g_cyc = (CI[CI_QLOC, i] - (g_tl * WI[WI_WLOC, i] / ls if ls > 0 else 0.0)  # drift, w_loc
                 + g_tl / cpu + gE * kc * cpu * cpu)                                # delay, energy
        WS[WS_GSPLIT, i, 0] = g_cyc * G * Ik
        for t in range(lo, hi):
            k = cv_k[t]
            if not WB[0, i, k]:
                continue
            Gk, r_, f_ = WS[WS_SPLIT, i, k + 1] * G, RC[i, k] * WS[WS_B, i, k], WS[WS_F, i, k]
            sr, sF = max(r_, _EPS), max(f_, _EPS)
            dr = 1.0 if r_ > _EPS else 0.0
            dF = 1.0 if f_ > _EPS else 0.0
            gt = gd if slow == k else 0.0
            if WB[1, i, k]:  # InstrT: D = G_ins/r + Gk (I_co + I_task)/F, E = P G_ins/r + kr Gk (I_co + I_task) F^2
                c_ = co + Ik
                gGk = gt * c_ / sF + gE * kr * c_ * f_ * f_ + WK[WK_GLAM, k] * c_
                g_r = -(gt + gE * P) * Gins / (sr * sr) * dr
                g_f = -gt * Gk * c_ / (sF * sF) * dF + gE * 2.0 * kr * Gk * c_ * f_ + WK[WK_GSERVED, k]
            else:  # DataT: D = Gk/r + Gk I_task/F, E = P Gk/r + kr Gk I_task F^2
                gGk = gt * (1.0 / sr + Ik / sF) + gE * (P / sr + kr * Ik * f_ * f_) + WK[WK_GLAM, k] * Ik
                g_r = -(gt + gE * P) * Gk / (sr * sr) * dr
                g_f = -gt * Gk * Ik / (sF * sF) * dF + gE * 2.0 * kr * Gk * Ik * f_ + WK[WK_GSERVED, k]
            WS[WS_GSPLIT, i, k + 1] = gGk * G
            WS[WS_GB, i, k] = g_r * RC[i, k]
            WS[WS_GF, i, k] = g_f
        # bandwidth: back through the floor b_min within 1, then the softmax over the used links
        _floor_budget_back(WS, WS_BW, WS_GB, 0, i, True, cv_k, lo, hi, pv[P_MINBW], 1.0, 1.0, LN)
        s_ = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            s_ += WS[WS_BW, i, k] * LN[0, k]
        for t in range(lo, hi):
            k = cv_k[t]
            if WS[WS_SPLIT, i, k + 1] > 0:
                gth[i, bw0 + k] += WS[WS_BW, i, k] * (LN[0, k] - s_)
    cap = pv[P_CAP]
    for k in range(K):  # RSU CPU: back through the allocation (floor within capacity, 1/load), then the softmax
        lo, hi = rsu_ptr[k], rsu_ptr[k + 1]
        load, tot = 0.0, th[I, cpu0 + k]
        for t in range(lo, hi):
            i = rsu_i[t]
            load += WS[WS_W, i, k]
            if WS[WS_SPLIT, i, k + 1] > 0:
                tot += th[i, cpu0 + k]
        L = max(1.0, load)
        _floor_budget_back(WS, WS_W, WS_GF, 0, k, False, rsu_i, lo, hi, pv[P_MINRSU], cap, cap / L, LN)
        s_ = 0.0
        if load > 1.0:
            for t in range(lo, hi):
                i = rsu_i[t]
                s_ += LN[0, i] * WS[WS_W, i, k] / L
        for t in range(lo, hi):  # d f / d w_ik
            i = rsu_i[t]
            LN[0, i] = cap / L * (LN[0, i] - s_)
        s_ = 0.0
        for t in range(lo, hi):
            i = rsu_i[t]
            if WS[WS_SPLIT, i, k + 1] > 0:
                s_ += WS[WS_W, i, k] * LN[0, i]
        for t in range(lo, hi):
            i = rsu_i[t]
            if WS[WS_SPLIT, i, k + 1] > 0:
                gth[i, cpu0 + k] += WS[WS_W, i, k] * (LN[0, i] - s_)
        gth[I, cpu0 + k] -= th[I, cpu0 + k] / tot * s_
    for i in range(I):  # split: the softmax over the kept parts
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        s_ = WS[WS_SPLIT, i, 0] * WS[WS_GSPLIT, i, 0]
        for t in range(lo, hi):
            c = cv_k[t] + 1
            s_ += WS[WS_SPLIT, i, c] * WS[WS_GSPLIT, i, c]
        if WS[WS_SPLIT, i, 0] > 0:
            gth[i, sp0] += WS[WS_SPLIT, i, 0] * (WS[WS_GSPLIT, i, 0] - s_)
        for t in range(lo, hi):
            c = cv_k[t] + 1
            if WS[WS_SPLIT, i, c] > 0:
                gth[i, sp0 + c] += WS[WS_SPLIT, i, c] * (WS[WS_GSPLIT, i, c] - s_)


@njit(cache=True, error_model="numpy")
def _slot_constants(pv, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q,
                    hq_loc, hl_loc, hq_rsu, hl_rsu, j):
    """One environment's slot (inputs with a leading axis of 1) -> the constants of _obj_forward: CI, CK,
    RC and f0, the part of the drift no decision changes (-sum_i Q_loc C_i tau / W^2 - sum_i Y_i E_max / E_ref^2).
    The Little's-law windows hold this slot in row j: their queue sums are fixed, their arrival sums
    are the history's plus this slot's."""
    I, K = se.shape[1], se.shape[2]
    m = hq_loc.shape[1]
    W, Er, tau = pv[P_WREF], pv[P_EREF], pv[P_TAU]
    CI, CK, RC = np.zeros((N_CI, I)), np.zeros((N_CK, K)), np.empty((I, K))
    f0 = 0.0
    for i in range(I):
        act = 1.0 if active[0, i] else 0.0
        CI[CI_G, i] = size[0, i] * act
        CI[CI_GINS, i], CI[CI_ITASK, i], CI[CI_ICO, i] = instr_bits[0, i], intensity[0, i], co_int[0, i]
        CI[CI_CPU, i], CI[CI_ACT, i], CI[CI_DEADLINE, i] = cv_cpu[0, i], act, deadline[0, i]
        CI[CI_QLOC, i] = q_loc[0, i] / W / W
        CI[CI_Y, i] = energy_q[0, i] / Er / Er
        qs, ls = 0.0, 0.0
        for r in range(m):
            qs += q_loc[0, i] if r == j else hq_loc[0, r, i]
            ls += 0.0 if r == j else hl_loc[0, r, i]
        CI[CI_QCLOC, i], CI[CI_LCLOC, i] = tau * qs, ls
        f0 -= CI[CI_QLOC, i] * cv_cpu[0, i] * tau + CI[CI_Y, i] * pv[P_BUDGET]
        for k in range(K):
            RC[i, k] = pv[P_SG] * pv[P_BW] * se[0, i, k]
    for k in range(K):
        CK[CK_Q, k] = q_rsu[0, k] / W / W
        qs, ls = 0.0, 0.0
        for r in range(m):
            qs += q_rsu[0, k] if r == j else hq_rsu[0, r, k]
            ls += 0.0 if r == j else hl_rsu[0, r, k]
        CK[CK_QC, k], CK[CK_LC, k] = tau * qs, ls
    return CI, CK, RC, f0


@njit(cache=True, error_model="numpy")
def _decision_at(x, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0):
    """The decision at one parameter vector: split (I, K+1), bandwidth, CPU request and CPU (I, K)."""
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    WS, WB, WI, WK, LN, th, gth = _workspace(eb)
    _exp_params(x, free_idx, eb, th)
    _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK)
    return WS[WS_SPLIT].copy(), WS[WS_B, :, :K].copy(), WS[WS_W, :, :K].copy(), WS[WS_F, :, :K].copy()


@njit(cache=True, error_model="numpy")
def _workspace(eb):
    """WS, WB, WI, WK, LN (line buffer), th, gth for the slot whose fixed entries' exponentials are eb
    (I+1, 3K+1); th starts as eb (_exp_params writes only the free entries)."""
    I, K = eb.shape[0] - 1, (eb.shape[1] - 1) // 3
    L = max(I, K)
    return (np.zeros((N_WS, I, K + 1)), np.zeros((2, I, K), dtype=np.bool_), np.zeros((N_WI, I)),
            np.zeros((N_WK, K)), np.zeros((1, L)), eb.copy(), np.zeros((I + 1, 3 * K + 1)))


@njit(cache=True, error_model="numpy", inline="always")
def _exp_params(x, free_idx, eb, th):
    """th = exp(parameters): the free entries exp(x) (clipped to +-60, as optimizer._masked_softmax); the
    fixed ones hold their exponentials eb already (_workspace), nothing writes them. O(d), not O(I K)."""
    D = th.shape[1]
    for q in range(free_idx.shape[0]):
        th[free_idx[q] // D, free_idx[q] % D] = math.exp(min(max(x[q], -60.0), 60.0))


@njit(cache=True, error_model="numpy")
def _eval_rows(X, f_out, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0):
    """-R(t) of every row of X into f_out."""
    WS, WB, WI, WK, LN, th, gth = _workspace(eb)
    for n in range(X.shape[0]):
        _exp_params(X[n], free_idx, eb, th)
        f_out[n] = _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK)


@njit(cache=True, error_model="numpy")
def _probe_kernel(x, u, B, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0):
    """cosim.optimizer._probe's candidates and values: each direction u[n] (any length) is tried + and - at
    a step of 1e-1, 1e-2 or 1e-3 (n mod 3) around x, clipped to [-B, B]. Returns the best candidate and
    its value."""
    n_dirs, d = u.shape
    WS, WB, WI, WK, LN, th, gth = _workspace(eb)
    xc, xb = np.empty(d), x.copy()
    fb = np.inf
    for sgn in (1.0, -1.0):  # the + candidates first, as the numpy version's row order
        for n in range(n_dirs):
            nrm = 0.0
            for q in range(d):
                nrm += u[n, q] * u[n, q]
            st = sgn * (1e-1, 1e-2, 1e-3)[n % 3] / math.sqrt(nrm)
            for q in range(d):
                xc[q] = min(max(x[q] + st * u[n, q], -B), B)
            _exp_params(xc, free_idx, eb, th)
            fc = _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK)
            if fc < fb:
                fb = fc
                xb[:] = xc
    return xb, fb


@njit(cache=True, error_model="numpy")
def _value_grad(x, g, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK, LN, th, gth):
    """-R(t) at x (returned) and its analytic gradient into g (zeros where the value is not finite)."""
    _exp_params(x, free_idx, eb, th)
    f = _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK)
    if not math.isfinite(f):
        g[:] = 0.0
        return f
    _obj_backward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, WS, WB, WI, WK, LN, gth)
    D = th.shape[1]
    for q in range(free_idx.shape[0]):
        g[q] = gth[free_idx[q] // D, free_idx[q] % D] if -60.0 < x[q] < 60.0 else 0.0
    return f


@njit(cache=True, error_model="numpy")
def _fd_grad(x, fx, h, B, g, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK, th):
    """Forward differences at x (backward where +h would leave the box); each probe reuses the
    exponentials of x, one entry multiplied by e^(+-h). Returns the evaluations spent (d)."""
    D = th.shape[1]
    _exp_params(x, free_idx, eb, th)
    for q in range(x.shape[0]):
        step = -h if x[q] + h > B else h
        r, c = free_idx[q] // D, free_idx[q] % D
        e0 = th[r, c]
        th[r, c] = e0 * math.exp(step)
        g[q] = (_obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK) - fx) / step
        th[r, c] = e0
    return x.shape[0]


@njit(cache=True, error_model="numpy")
def _bfgs_kernel(x0, iterations, line_steps, line_max, max_step, h, B, tol, prune_after, prune_gap, scan,
                 analytic, memory, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0):
    """cosim.optimizer.bfgs_multistart, loop for loop, on the compiled objective. With ``scan`` the line
    search walks the step grid from the longest step, one step at a time, and stops once the values
    rise again after an improvement (the grid's best step when the objective is unimodal along the
    ray) instead of evaluating every step. With ``analytic`` the gradients are _value_grad's (one
    forward and one backward pass) instead of d forward differences. Returns x, f, f0, status
    (0 iteration cap, 1 converged, 2 pruned), last_gain, iterations, the number of objective
    evaluations (finite-difference probes included) and the number of analytic gradients.

    ``memory`` < 0: the dense inverse Hessian H (O(d^2) per iteration); m >= 0: limited-memory BFGS, H
    applied to the gradient by the two-loop recursion over the last m steps and gradient changes (0:
    every one since the last reset) on the identity (O(pairs d) per iteration). With every pair kept it
    is the dense method's H, so the same iterates within rounding. A reset (failed line search) forgets
    the pairs, as the dense method sets H = identity."""
    S, d = x0.shape
    WS, WB, WI, WK, LN, th, gth = _workspace(eb)
    x = np.empty((S, d))
    for s_ in range(S):
        for q in range(d):
            x[s_, q] = min(max(x0[s_, q], -B), B)
    f = np.empty(S)

    def ev(xv):  # noqa: ANN001 - the objective at one point
        _exp_params(xv, free_idx, eb, th)
        return _obj_forward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK)

    def grad(xg, fg, gout):  # noqa: ANN001 - the gradient at xg (value fg) into gout; returns evaluations spent
        if analytic:
            _value_grad(xg, gout, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0, WS, WB, WI, WK,
                        LN, th, gth)
            return 0
        return _fd_grad(xg, fg, h, B, gout, free_idx, eb, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, f0,
                        WS, WB, WI, WK, th)

    n_evals, n_grads = 0, 0
    for s_ in range(S):
        f[s_] = ev(x[s_])
    n_evals += S
    fstart = f.copy()
    status = np.zeros(S, np.int64)
    last_gain = np.full(S, np.nan)
    iters = np.zeros(S, np.int64)
    if d == 0:
        status[:] = 1
        return x, f, fstart, status, np.zeros(S), iters, n_evals, n_grads
    g = np.empty((S, d))
    dense = memory < 0
    H = np.zeros((S, d, d) if dense else (S, 1, 1))
    # L-BFGS pairs: a ring of the last m steps and gradient changes per start (every step: m = iterations)
    m = memory if memory > 0 else max(iterations, 1)
    if dense:
        m = 1
    Sm, Ym = np.empty((S, m, d)), np.empty((S, m, d))
    rho_m, al_m = np.empty((S, m)), np.empty(m)
    n_pairs, head = np.zeros(S, np.int64), np.zeros(S, np.int64)
    for s_ in range(S):
        n_evals += grad(x[s_], f[s_], g[s_])
        n_grads += analytic
        if dense:
            for q in range(d):
                H[s_, q, q] = 1.0
    fresh = np.ones(S, np.bool_)
    alive = np.ones(S, np.bool_)
    alphas = np.empty(line_steps)
    for a in range(line_steps):
        alphas[a] = line_max * 2.0 ** (-a)
    pdir = np.empty(d)
    xp = np.empty(d)
    gn = np.empty(d)
    sv = np.empty(d)
    yv = np.empty(d)
    Hy = np.empty(d)
    xn = np.empty(d)
    D = th.shape[1]
    for it in range(iterations):
        if it >= prune_after:
            fb = np.inf
            for s_ in range(S):
                fb = min(fb, f[s_])
            for s_ in range(S):
                if alive[s_] and f[s_] > fb + prune_gap * abs(fb):
                    status[s_] = 2
                    alive[s_] = False
        n_alive = 0
        for s_ in range(S):
            n_alive += alive[s_]
        if n_alive == 0:
            break
        # One iteration of every live start: its line search, then its update. (The starts are
        # independent within an iteration, so this is the numpy version's lockstep order's result.)
        for s_ in range(S):
            if not alive[s_]:
                continue
            iters[s_] += 1
            nrm = 0.0
            if dense:
                for q in range(d):
                    acc = 0.0
                    for r in range(d):
                        acc += H[s_, q, r] * g[s_, r]
                    pdir[q] = -acc
                    nrm += acc * acc
            else:  # two-loop recursion: pdir = -H g
                for q in range(d):
                    pdir[q] = g[s_, q]
                for j in range(n_pairs[s_]):  # newest first
                    c = (head[s_] - 1 - j + m) % m
                    acc = 0.0
                    for q in range(d):
                        acc += Sm[s_, c, q] * pdir[q]
                    al_m[c] = rho_m[s_, c] * acc
                    for q in range(d):
                        pdir[q] -= al_m[c] * Ym[s_, c, q]
                for j in range(n_pairs[s_] - 1, -1, -1):  # oldest first
                    c = (head[s_] - 1 - j + m) % m
                    acc = 0.0
                    for q in range(d):
                        acc += Ym[s_, c, q] * pdir[q]
                    bet = al_m[c] - rho_m[s_, c] * acc
                    for q in range(d):
                        pdir[q] += bet * Sm[s_, c, q]
                for q in range(d):
                    pdir[q] = -pdir[q]
                    nrm += pdir[q] * pdir[q]
            sc_ = min(1.0, max_step / max(math.sqrt(nrm), 1e-300))
            for q in range(d):
                pdir[q] *= sc_
            best = np.inf
            last_best = False  # the workspace holds the best step's forward pass
            for a in range(line_steps):
                for q in range(d):
                    xp[q] = min(max(x[s_, q] + alphas[a] * pdir[q], -B), B)
                fa = ev(xp)
                n_evals += 1
                last_best = fa < best
                if fa < best:
                    best = fa
                    for q in range(d):
                        xn[q] = xp[q]
                    if scan == 2 and best < f[s_] - tol * abs(f[s_]):
                        break  # first: the first step that improves
                elif scan == 1 and best < f[s_]:
                    break  # scan: the values rise again after an improvement
            if not best < f[s_] - tol * abs(f[s_]):
                if fresh[s_]:
                    status[s_] = 1
                    alive[s_] = False
                if dense:
                    for q in range(d):
                        for r in range(d):
                            H[s_, q, r] = 1.0 if q == r else 0.0
                n_pairs[s_] = 0
                fresh[s_] = True
                continue
            fn = best
            if analytic and last_best:  # only the backward pass is left
                _obj_backward(th, split_mask, SP, sp0, bw0, cpu0, pv, CI, CK, RC, WS, WB, WI, WK, LN, gth)
                for q in range(d):
                    gn[q] = gth[free_idx[q] // D, free_idx[q] % D] if -60.0 < xn[q] < 60.0 else 0.0
            else:
                n_evals += grad(xn, fn, gn)
            n_grads += analytic
            sy, ns, ny = 0.0, 0.0, 0.0
            for q in range(d):
                sv[q] = xn[q] - x[s_, q]
                yv[q] = gn[q] - g[s_, q]
                sy += sv[q] * yv[q]
                ns += sv[q] * sv[q]
                ny += yv[q] * yv[q]
            if sy > 1e-12 * math.sqrt(ns) * math.sqrt(ny) and not dense:  # L-BFGS: one more pair
                c = head[s_]
                for q in range(d):
                    Sm[s_, c, q] = sv[q]
                    Ym[s_, c, q] = yv[q]
                rho_m[s_, c] = 1.0 / sy
                head[s_] = (c + 1) % m
                n_pairs[s_] = min(n_pairs[s_] + 1, m)
                fresh[s_] = False
            elif sy > 1e-12 * math.sqrt(ns) * math.sqrt(ny):  # dense: the BFGS update of H
                rho = 1.0 / sy
                yHy = 0.0
                for q in range(d):
                    acc = 0.0
                    for r in range(d):
                        acc += H[s_, q, r] * yv[r]
                    Hy[q] = acc
                    yHy += yv[q] * acc
                c2 = rho * rho * yHy + rho
                for q in range(d):
                    for r in range(d):
                        H[s_, q, r] = (H[s_, q, r] - rho * (sv[q] * Hy[r] + Hy[q] * sv[r]) + c2 * sv[q] * sv[r])
                fresh[s_] = False
            last_gain[s_] = (f[s_] - fn) / max(abs(f[s_]), 1e-12)
            for q in range(d):
                x[s_, q] = xn[q]
                g[s_, q] = gn[q]
            f[s_] = fn
    return x, f, fstart, status, last_gain, iters, n_evals, n_grads


@njit(cache=True, error_model="numpy")
def _project_kernel(pv, ez, covered, active, sp0, bw0, bw1, cpu0):
    """model.project for every row: exp'd logits (N, I, A) -> split, bandwidth, cpu_request, cpu."""
    E, I, K = covered.shape
    split, bw_raw, req = np.empty((E, I, K + 1)), np.empty((E, I, K)), np.empty((E, I, K))
    b, w, F = np.empty((E, I, K)), np.empty((E, I, K)), np.empty((E, I, K))
    used, tmp = np.empty((I, K), dtype=np.bool_), np.empty(I)
    for e in range(E):
        _project_env(pv, ez, covered, active, sp0, bw0, bw1, cpu0, split, bw_raw, req, e)
        make_decision_env(pv, split, bw_raw, req, b, w, F, used, tmp, e)
    return split, b, w, F


def project(p: M.ModelParams, pv: np.ndarray, raw: np.ndarray, covered: np.ndarray,
            active: np.ndarray) -> M.Decision:
    """model.project, fused."""
    lay = M.ActionLayout(p.n_rsus)
    ez = np.exp(np.clip(np.nan_to_num(np.asarray(raw, dtype=float)), -_LOGIT_CLIP, _LOGIT_CLIP))
    split, b, w, F = _project_kernel(pv, ez, np.ascontiguousarray(covered), np.ascontiguousarray(active),
                                     lay.split.start, lay.bandwidth.start, lay.bandwidth.stop, lay.cpu.start)
    return M.Decision(split=split, bandwidth=b, cpu_request=w, cpu=F)


@njit(cache=True, error_model="numpy")
def _rewards_kernel(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
                    q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j):
    """R(t) of N decisions in environment 0 (model.slot's reward only)."""
    N, I, K = b.shape
    f3 = np.empty((7, N, I, K))
    b3 = np.empty((2, N, I, K), dtype=np.bool_)
    f2 = np.empty((11, N, I))
    fr = np.empty((3, N, K))
    miss = np.empty((N, I), dtype=np.bool_)
    sc, rw = np.empty(N), np.empty(N)
    slot_env(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
             q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j, 0, 0, N,
             f3[0], b3[0], b3[1], f3[1], f3[2], f2[0], f3[3], f2[1], fr[0], f2[2], f2[3], f2[4], miss, f2[5],
             f3[4], f2[6], fr[1], f2[7], f2[8], f2[9], fr[2], f2[10], sc, rw)
    return rw


LINE_SEARCHES = ("grid", "scan", "first")  # _bfgs_kernel's ``scan`` codes


class SlotObjective:
    """The fused form of cosim.optimizer.SlotProblem's objective for one environment: -R(t) of
    parameter vectors (decode, make_decision and the slot's reward in one pass), its analytic
    gradient and its multi-start BFGS (dense or limited-memory).

    ``links`` (cv_ptr, cv_k, rsu_ptr, rsu_i): the covered pairs of active CVs, CV i's RSUs
    cv_k[cv_ptr[i]:cv_ptr[i+1]] and RSU k's CVs rsu_i[rsu_ptr[k]:rsu_ptr[k+1]], ascending (the
    order of the dense loops, so the sums and the values are the same bit for bit)."""

    def __init__(self, prob: Any):
        p, st, tk = prob.p, prob.state, prob.tasks
        c = np.ascontiguousarray
        self.pv = pv = param_vector(p)
        self.free_idx = np.flatnonzero(prob.free.ravel()).astype(np.int64)
        self.eb = np.exp(np.clip(np.asarray(prob.base, dtype=float), -60.0, 60.0))  # fixed entries' exponentials
        self.split_mask = c(prob.split_mask)
        cov = self.split_mask[:, 1:]  # the links: covered (CV, RSU) pairs of active CVs, by CV and by RSU
        ci, ck = np.nonzero(cov)
        kk, ii = np.nonzero(cov.T)
        ptr = lambda idx, n: np.searchsorted(idx, np.arange(n + 1)).astype(np.int64)  # noqa: E731
        self.links = (ptr(ci, cov.shape[0]), ck.astype(np.int64), ptr(kk, cov.shape[1]), ii.astype(np.int64))
        lay = prob.lay
        self.lay = (lay.split.start, lay.bandwidth.start, lay.cpu.start)
        I, K = prob.I, prob.K
        f2 = lambda a: c(np.asarray(a, dtype=float).reshape(1, -1))  # noqa: E731
        j = int(st.t % p.window)
        self.inputs = (f2(tk.size), f2(tk.instr), f2(tk.intensity), f2(tk.co_intensity), f2(tk.deadline),
                       f2(prob.cv_cpu), c(np.asarray(prob.spec_eff, dtype=float).reshape(1, I, K)),
                       c(prob.active.reshape(1, I)), f2(st.q_loc), f2(st.q_rsu), f2(st.energy),
                       c(st.hist_q_loc, dtype=float), c(st.hist_lam_loc, dtype=float), c(st.hist_q_rsu, dtype=float),
                       c(st.hist_lam_rsu, dtype=float), j)
        CI, CK, RC, f0 = _slot_constants(self.pv, *self.inputs)
        self.problem = (self.free_idx, self.eb, self.split_mask, self.links, *self.lay, pv, CI, CK, RC, f0)
        self.I, self.K = I, K

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=float)
        f = np.empty(x.shape[0])
        _eval_rows(x, f, *self.problem)
        return f

    def decision(self, x: np.ndarray) -> M.Decision:
        """The decision (leading axis 1) at one parameter vector x (d,)."""
        split, b, w, F = _decision_at(np.ascontiguousarray(x, dtype=float), *self.problem)
        return M.Decision(split=split[None], bandwidth=b[None], cpu_request=w[None], cpu=F[None])

    def probe(self, x: np.ndarray, u: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
        """The best of x +- s u_n (s = 1e-1, 1e-2, 1e-3 by turns, u normalised) and its value."""
        xb, fb = _probe_kernel(np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(u, dtype=float),
                               float(bound), *self.problem)
        return xb, float(fb)

    def rewards(self, dec: M.Decision) -> np.ndarray:
        """R(t) of N decisions (N, I, ...) (model.slot's reward, fused)."""
        c = np.ascontiguousarray
        return _rewards_kernel(self.pv, c(dec.split), c(dec.bandwidth), c(dec.cpu), *self.inputs)

    def value_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """-R(t) at one parameter vector x (d,) and its analytic gradient (_obj_backward)."""
        x = np.ascontiguousarray(x, dtype=float)
        g = np.empty(x.shape[0])
        f = _value_grad(x, g, *self.problem, *_workspace(self.eb))
        return float(f), g

    def bfgs(self, x0: np.ndarray, opt: dict[str, Any]) -> tuple:
        return _bfgs_kernel(np.ascontiguousarray(x0, dtype=float), int(opt["iterations"]), int(opt["line_steps"]),
                            float(opt["line_max"]), float(opt["max_step"]), float(opt["fd_step"]), float(opt["bound"]),
                            float(opt["tol"]), int(opt["prune_after"]), float(opt["prune_gap"]),
                            LINE_SEARCHES.index(opt["line_search"]), opt["gradient"] == "analytic",
                            int(opt["memory"]) if opt["method"] == "lbfgs" else -1, *self.problem)
