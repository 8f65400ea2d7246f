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
    """The fused observation applies to the twin layout it was written for, and only then."""
    blocks = getattr(twin.layout, "_blocks", None)
    return blocks is not None and tuple(n for n, _ in blocks()) == OBS_BLOCKS


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

    The twin's staleness and sync-error noise are applied as in DigitalTwin.observe (same
    history, same generator); a twin layout this kernel does not know gets the numpy observation."""
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
    true_dt = full[..., dt]
    twin._history.append(true_dt)
    state = full.astype(np.float32).reshape(E, I * D)
    if twin.enabled and twin.staleness == 0 and twin.sync_error <= 0:
        obs = state.reshape(E, I, D).copy()
    else:
        if twin.enabled:
            seen = twin._history[0]
            if twin.sync_error > 0:
                seen = seen * (1.0 + twin.sync_error * twin._rng.standard_normal(seen.shape))
        else:
            seen = 0.0
        obs = full.copy()
        obs[..., dt] = seen
        obs = obs.astype(np.float32)
    sim.obs, sim.state = obs, state


# ---------------------------------------------------------------------------
# The per-slot optimiser's objective and its multi-start BFGS (cosim.optimizer), for one environment

@njit(cache=True, error_model="numpy", inline="always")
def _decode_row(th, split_mask, sp0, bw0, cpu0, pv, split, bwv, w, n):
    """cosim.optimizer.SlotProblem.decode of one candidate from its exponentiated parameters ``th``
    (I+1, 3K+1) into row n of split (., I, K+1), bandwidth shares bwv and CPU shares w (., I, K)."""
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    for i in range(I):  # split: masked softmax, small parts dropped
        tot = 0.0
        for k in range(K + 1):
            v = th[i, sp0 + k] if split_mask[i, k] else 0.0
            split[n, i, k] = v
            tot += v
        for k in range(K + 1):
            split[n, i, k] = split[n, i, k] / (tot if tot > 0 else 1.0)
        _drop_small_parts_row(split, pv[P_MINSPLIT], n, i)
        tot = 0.0
        for k in range(K):  # bandwidth over the RSUs that get a part
            v = th[i, bw0 + k] if split[n, i, k + 1] > 0 else 0.0
            bwv[n, i, k] = v
            tot += v
        for k in range(K):
            bwv[n, i, k] = bwv[n, i, k] / (tot if tot > 0 else 1.0)
    for k in range(K):  # RSU CPU: softmax over the CVs offloading there and the idle logit (row I)
        tot = th[I, cpu0 + k]
        for i in range(I):
            v = th[i, cpu0 + k] if split[n, i, k + 1] > 0 else 0.0
            w[n, i, k] = v
            tot += v
        for i in range(I):
            w[n, i, k] = w[n, i, k] / (tot if tot > 0 else 1.0)


@njit(cache=True, error_model="numpy")
def _decode_eval(X, n0, n1, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity, co_int,
                 deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j,
                 f_out, S3, B3, S2, SR, MS, sc, rw, tmp, th, ET0, mul):
    """-R(t) of the parameter vectors X[n0:n1] into f_out: cosim.optimizer.SlotProblem.decode, then
    model.make_decision and model.slot. The environment's inputs have a leading axis of 1; the scratch
    (S3 (9, N, I, K+1), B3 (3, N, I, K) bool, S2 (11, N, I), SR (3, N, K), MS (N, I) bool, sc, rw (N,),
    tmp (I,), th (I+1, 3K+1)) has room for N >= n1 rows.

    Forward-difference probes (``mul`` non-empty): row n is the point whose exp'd parameters ``ET0``
    have entry free_idx[n] multiplied by mul[n] = e^(+-h), so a probe needs no exponential at all."""
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    D = base.shape[1]
    lo, hi = -60.0, 60.0  # as optimizer._masked_softmax
    split = S3[0]
    bwv, w, b, wd, F = S3[1, :, :, :K], S3[2, :, :, :K], S3[3, :, :, :K], S3[4, :, :, :K], S3[5, :, :, :K]
    probes = mul.shape[0] > 0
    for n in range(n0, n1):
        if probes:
            for r in range(I + 1):
                for c in range(D):
                    th[r, c] = ET0[r, c]
            th[free_idx[n] // D, free_idx[n] % D] *= mul[n]
        else:
            for r in range(I + 1):
                for c in range(D):
                    th[r, c] = base[r, c]
            for q in range(free_idx.shape[0]):
                th[free_idx[q] // D, free_idx[q] % D] = X[n, q]
            for r in range(I + 1):  # th now holds the exponentials
                for c in range(D):
                    th[r, c] = math.exp(min(max(th[r, c], lo), hi))
        _decode_row(th, split_mask, sp0, bw0, cpu0, pv, split, bwv, w, n)
        make_decision_env(pv, split, bwv, w, b, wd, F, B3[0, 0], tmp, n)
    slot_env(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
             q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j, 0, n0, n1,
             S3[6, :, :, :K], B3[1], B3[2], S3[7, :, :, :K], S3[8, :, :, :K], S2[0], S3[1, :, :, :K], S2[1], SR[0],
             S2[2], S2[3], S2[4], MS, S2[5], S3[2, :, :, :K], S2[6], SR[1], S2[7], S2[8], S2[9], SR[2], S2[10],
             sc, rw)
    for n in range(n0, n1):
        f_out[n] = -rw[n] if math.isfinite(rw[n]) else np.inf  # a NaN can never win


@njit(cache=True, error_model="numpy")
def _bfgs_kernel(x0, iterations, line_steps, line_max, max_step, h, B, tol, prune_after, prune_gap, scan,
                 chunk, analytic, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity, co_int, deadline,
                 cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j,
                 S3, B3, S2, SR, MS, sc, rw, tmp, th):
    """cosim.optimizer.bfgs_multistart, loop for loop, on the fused objective. With ``scan`` the line
    search walks the step grid from the longest step, 4 steps per call, and stops once the values
    rise again after an improvement (the grid's best step when the objective is unimodal along the
    ray) instead of evaluating every step. With ``analytic`` the gradients are _value_grad's (one
    forward and one backward pass) instead of d forward differences. Returns x, f, f0, status
    (0 iteration cap, 1 converged, 2 pruned), last_gain, iterations, the number of objective
    evaluations (finite-difference probes included) and the number of analytic gradients."""
    S, d = x0.shape
    cap = S3.shape[1]
    x = np.empty((S, d))
    for s_ in range(S):
        for q in range(d):
            x[s_, q] = min(max(x0[s_, q], -B), B)
    f = np.empty(S)
    fbuf = np.empty(cap)
    P = np.empty((cap, d))  # probe points

    no_mul = np.empty(0)
    I_, K_ = split_mask.shape[0], split_mask.shape[1] - 1
    GF3, GB3, GF2, GFR, GMS, sc1, rw1, tmp1, th1, gth, lv, ub = _grad_workspace(I_, K_)
    n_grads = 0

    def grad(xg, fg, gout):  # noqa: ANN001 - gradient at xg (value fg) into gout; returns evaluations spent
        if analytic:
            _value_grad(xg, gout, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity,
                        co_int, deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu,
                        hl_rsu, j, GF3, GB3, GF2, GFR, GMS, sc1, rw1, tmp1, th1, gth, lv, ub)
            return 0
        return _fd_grad(xg, fg, h, B, gout, P, fbuf, d, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size,
                        instr_bits, intensity, co_int, deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q,
                        hq_loc, hl_loc, hq_rsu, hl_rsu, j, S3, B3, S2, SR, MS, sc, rw, tmp, th)

    def ev(Xs, n):  # noqa: ANN001 - evaluates Xs[:n] into fbuf[:n]
        _decode_eval(Xs, 0, n, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity,
                     co_int, deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu,
                     j, fbuf, S3, B3, S2, SR, MS, sc, rw, tmp, th, th, no_mul)

    n_evals = 0
    for s0 in range(0, S, cap):
        n = min(cap, S - s0)
        ev(x[s0:s0 + n], n)
        f[s0:s0 + n] = fbuf[:n]
        n_evals += n
    f0 = f.copy()
    status = np.zeros(S, np.int64)
    last_gain = np.full(S, np.nan)
    iters = np.zeros(S, np.int64)
    if d == 0:
        status[:] = 1
        return x, f, f0, status, np.zeros(S), iters, n_evals, n_grads
    g = np.empty((S, d))
    H = np.zeros((S, d, d))
    for s_ in range(S):
        n_evals += grad(x[s_], f[s_], g[s_])
        n_grads += analytic
        for q in range(d):
            H[s_, q, q] = 1.0
    fresh = np.ones(S, np.bool_)
    alive = np.ones(S, np.bool_)
    alphas = np.empty(line_steps)
    for a in range(line_steps):
        alphas[a] = line_max * 2.0 ** (-a)
    pdir = np.empty(d)
    xn = np.empty(d)
    gn = np.empty(d)
    sv = np.empty(d)
    yv = np.empty(d)
    Hy = np.empty(d)
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
        # The line searches of every live start (lockstep, as the numpy version).
        okv = np.zeros(S, np.bool_)
        fnew = np.empty(S)
        xnew = np.empty((S, d))
        for s_ in range(S):
            if not alive[s_]:
                continue
            iters[s_] += 1
            nrm = 0.0
            for q in range(d):
                acc = 0.0
                for r in range(d):
                    acc += H[s_, q, r] * g[s_, r]
                pdir[q] = -acc
                nrm += acc * acc
            sc_ = min(1.0, max_step / max(math.sqrt(nrm), 1e-300))
            for q in range(d):
                pdir[q] *= sc_
            best, jb = np.inf, -1
            if scan:  # the grid in chunks of 4 steps, longest first, until the values rise again
                a0 = 0
                while a0 < line_steps:
                    nb = min(chunk, line_steps - a0)
                    for a in range(nb):
                        for q in range(d):
                            P[a, q] = min(max(x[s_, q] + alphas[a0 + a] * pdir[q], -B), B)
                    ev(P, nb)
                    n_evals += nb
                    rose = False
                    for a in range(nb):
                        if fbuf[a] < best:
                            best, jb = fbuf[a], a0 + a
                            for q in range(d):
                                xnew[s_, q] = P[a, q]
                        elif best < f[s_]:
                            rose = True
                            break
                    if rose:
                        break
                    a0 += nb
            else:
                for a in range(line_steps):
                    for q in range(d):
                        P[a, q] = min(max(x[s_, q] + alphas[a] * pdir[q], -B), B)
                ev(P, line_steps)
                n_evals += line_steps
                for a in range(line_steps):
                    if fbuf[a] < best:
                        best, jb = fbuf[a], a
                for q in range(d):
                    xnew[s_, q] = P[jb, q]
            fnew[s_] = best
            okv[s_] = best < f[s_] - tol * abs(f[s_])
        for s_ in range(S):
            if not alive[s_]:
                continue
            if not okv[s_]:
                if fresh[s_]:
                    status[s_] = 1
                    alive[s_] = False
                for q in range(d):
                    for r in range(d):
                        H[s_, q, r] = 1.0 if q == r else 0.0
                fresh[s_] = True
                continue
            for q in range(d):
                xn[q] = xnew[s_, q]
            fn = fnew[s_]
            n_evals += grad(xn, fn, gn)
            n_grads += analytic
            sy, ns, ny = 0.0, 0.0, 0.0
            for q in range(d):
                sv[q] = xn[q] - x[s_, q]
                yv[q] = gn[q] - g[s_, q]
                sy += sv[q] * yv[q]
                ns += sv[q] * sv[q]
                ny += yv[q] * yv[q]
            if sy > 1e-12 * math.sqrt(ns) * math.sqrt(ny):
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
    return x, f, f0, status, last_gain, iters, n_evals, n_grads


@njit(cache=True, error_model="numpy")
def _fd_grad(x, fx, h, B, g, P, fbuf, d, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits,
             intensity, co_int, deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu,
             j, S3, B3, S2, SR, MS, sc, rw, tmp, th):
    """Forward differences at x (backward where +h would leave the box), d probes in one call; the
    probes reuse the exponentials of x (see _decode_eval)."""
    D = base.shape[1]
    ET0 = np.empty(base.shape)
    for r in range(base.shape[0]):
        for c in range(D):
            ET0[r, c] = base[r, c]
    for q in range(d):
        ET0[free_idx[q] // D, free_idx[q] % D] = x[q]
    for r in range(base.shape[0]):
        for c in range(D):
            ET0[r, c] = math.exp(min(max(ET0[r, c], -60.0), 60.0))
    mul = np.empty(d)
    eh, emh = math.exp(h), math.exp(-h)
    for q in range(d):
        mul[q] = emh if x[q] + h > B else eh
    _decode_eval(P, 0, d, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity, co_int,
                 deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j,
                 fbuf, S3, B3, S2, SR, MS, sc, rw, tmp, th, ET0, mul)
    for q in range(d):
        step = -h if x[q] + h > B else h
        g[q] = (fbuf[q] - fx) / step
    return d


@njit(cache=True, error_model="numpy", inline="always")
def _slowest(t_loc, t_rsu, i, K):
    """Which part of CV i sets its delay (the max over parts, first of ties): -1 local, else the RSU."""
    best, val = -1, t_loc[0, i]
    for k in range(K):
        if t_rsu[0, i, k] > val:
            best, val = k, t_rsu[0, i, k]
    return best


@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget_back(x, used, floor, budget, g_out, g_x, n_idx):
    """Adjoint of model._floor_within_budget along one line x[:n_idx]: output adjoints g_out -> g_x.
    Entries at the floor are constant there; above the budget the shrink factor depends on every
    used entry's floored value."""
    n = 0
    total = 0.0
    for a in range(n_idx):
        if used[a]:
            n += 1
            total += max(x[a], floor)
    scale, over, room = 1.0, False, 1.0
    if total > budget:
        room = total - n * floor
        over = room > 0
        scale = (budget - n * floor) / (room if over else 1.0)
    s_ = 0.0
    if over:
        for a in range(n_idx):
            if used[a]:
                s_ += g_out[a] * (max(x[a], floor) - floor)
        s_ *= scale / room
    for a in range(n_idx):
        g_x[a] = g_out[a] * scale - s_ if (used[a] and x[a] > floor) else 0.0


@njit(cache=True, error_model="numpy")
def _grad_workspace(I, K):
    """Scratch of _value_grad for I CVs and K RSUs."""
    D, L = 3 * K + 1, max(I, K)
    return (np.zeros((14, 1, I, K + 1)), np.zeros((3, 1, I, K), dtype=np.bool_), np.zeros((11, 1, I)),
            np.zeros((3, 1, K)), np.zeros((1, I), dtype=np.bool_), np.zeros(1), np.zeros(1), np.zeros(I),
            np.zeros((I + 1, D)), np.zeros((I + 1, D)), np.zeros((5, L)), np.zeros(L, dtype=np.bool_))


@njit(cache=True, error_model="numpy")
def _value_grad(x, g, free_idx, base, split_mask, sp0, bw0, cpu0, pv, size, instr_bits, intensity, co_int,
                deadline, cv_cpu, se, active, q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j,
                GF3, GB3, GF2, GFR, GMS, sc, rw, tmp, th, gth, lv, ub):
    """-R(t) at the parameter vector x (returned) and its gradient, derived by hand (reverse mode), into g.

    The forward pass is _decode_eval's for one candidate (the same numbers); the adjoints then run back
    through the slot (cost, drift-plus-penalty, Little's-law windows, each part's delay and energy),
    model.make_decision (floors within budgets, the CPU allocation) and the decode's softmaxes. The
    objective is piecewise smooth: which parts are dropped or used, each part's mode (InstrT/DataT),
    the slowest part of each task (the max over parts) and deadline misses are held fixed, so on a
    kink this is the derivative of the piece the point lies on. Scratch (see SlotObjective.grad_scratch):
    GF3 (14, 1, I, K+1), GB3 (3, 1, I, K) bool, GF2 (11, 1, I), GFR (3, 1, K), GMS (1, I) bool,
    sc, rw (1,), tmp (I,), th, gth (I+1, 3K+1), lv (5, max(I, K)), ub (max(I, K),) bool."""
    I, K = split_mask.shape[0], split_mask.shape[1] - 1
    D = base.shape[1]
    for r in range(I + 1):
        for c in range(D):
            th[r, c] = base[r, c]
    for q in range(free_idx.shape[0]):
        th[free_idx[q] // D, free_idx[q] % D] = x[q]
    for r in range(I + 1):
        for c in range(D):
            th[r, c] = math.exp(min(max(th[r, c], -60.0), 60.0))  # as _decode_eval
    split, bwv, w = GF3[0], GF3[1, :, :, :K], GF3[2, :, :, :K]
    b, wd, F = GF3[3, :, :, :K], GF3[4, :, :, :K], GF3[5, :, :, :K]
    rate, d_up, d_comp = GF3[6, :, :, :K], GF3[7, :, :, :K], GF3[8, :, :, :K]
    t_rsu, lam_rsu = GF3[9, :, :, :K], GF3[10, :, :, :K]
    instr, used = GB3[1], GB3[2]
    t_loc, w_loc, lam_loc = GF2[0], GF2[1], GF2[5]
    w_rsu = GFR[0]
    _decode_row(th, split_mask, sp0, bw0, cpu0, pv, split, bwv, w, 0)
    make_decision_env(pv, split, bwv, w, b, wd, F, GB3[0, 0], tmp, 0)
    slot_env(pv, split, b, F, size, instr_bits, intensity, co_int, deadline, cv_cpu, se, active,
             q_loc, q_rsu, energy_q, hq_loc, hl_loc, hq_rsu, hl_rsu, j, 0, 0, 1,
             rate, instr, used, d_up, d_comp, t_loc, t_rsu, w_loc, w_rsu, GF2[2], GF2[3], GF2[4], GMS,
             lam_loc, lam_rsu, GF2[6], GFR[1], GF2[7], GF2[8], GF2[9], GFR[2], GF2[10], sc, rw)
    if not math.isfinite(rw[0]):
        for q in range(g.shape[0]):
            g[q] = 0.0
        return np.inf

    # f = V sum_i cost_i + sum_i drift_loc_i + sum_k drift_rsu_k + sum_i drift_energy_i, backwards.
    m = hq_loc.shape[1]
    tau, P, kr, kc, W, Er = pv[P_TAU], pv[P_TX], pv[P_KRSU], pv[P_KCV], pv[P_WREF], pv[P_EREF]
    gd = pv[P_V] * pv[P_ALPHA] / pv[P_TREF]   # d f / d delay_i (active CV)
    ge = pv[P_V] * (1.0 - pv[P_ALPHA]) / Er    # d f / d energy_i through the cost
    rate_c = pv[P_SG] * pv[P_BW]
    g_split, g_b, g_F = GF3[11, 0], GF3[12, 0], GF3[13, 0]  # d f / d split, b, F (I, K+1)
    g_lam_tot, g_served = lv[0], lv[1]                      # per RSU (K,)
    xl, go, gx = lv[2], lv[3], lv[4]                         # one line of a floor-within-budget step
    for k in range(K):
        lam_tot = 0.0
        g_wr = 0.0  # d f / d w_rsu_k: the delay adjoints of the tasks whose slowest part is at RSU k
        for i in range(I):
            lam_tot += lam_rsu[0, i, k]
            if active[0, i] and used[0, i, k] and _slowest(t_loc, t_rsu, i, K) == k:
                g_wr += gd
        ls = 0.0
        for r in range(m):
            ls += lam_tot if r == j else hl_rsu[0, r, k]
        qk = q_rsu[0, k] / W / W
        g_lam_tot[k] = qk - (g_wr * w_rsu[0, k] / ls if ls > 0 else 0.0)  # w_rsu = tau Q / ls
        g_served[k] = -qk * tau                                           # per Hz of F_ik
    for r in range(I + 1):
        for c in range(D):
            gth[r, c] = 0.0
    for i in range(I):
        for k in range(K + 1):
            g_split[i, k] = 0.0
            g_b[i, k] = 0.0
            g_F[i, k] = 0.0
        if not active[0, i]:
            continue
        G, Ik, co, gins, cpu = size[0, i], intensity[0, i], co_int[0, i], instr_bits[0, i], cv_cpu[0, i]
        gE = ge + energy_q[0, i] / Er / Er
        slow = _slowest(t_loc, t_rsu, i, K)
        ls = 0.0
        for r in range(m):
            ls += lam_loc[0, i] if r == j else hl_loc[0, r, i]
        g_tl = gd if (slow == -1 and split[0, i, 0] > 0) else 0.0
        g_cyc = (q_loc[0, i] / W / W - (g_tl * w_loc[0, i] / ls if ls > 0 else 0.0)  # lam_loc, w_loc
                 + g_tl / cpu + gE * kc * cpu * cpu)                                # delay, energy
        g_split[i, 0] = g_cyc * G * Ik
        for k in range(K):
            if not used[0, i, k]:
                continue
            Gk, r_, f_ = split[0, i, k + 1] * G, rate[0, i, k], F[0, i, k]
            sr, sF = max(r_, _EPS), max(f_, _EPS)
            dr = 1.0 if r_ > _EPS else 0.0
            dF = 1.0 if f_ > _EPS else 0.0
            gt = gd if slow == k else 0.0
            if instr[0, i, k]:  # D = G_ins/r + Gk (I_co + I_task)/F, E = P G_ins/r + kr Gk (I_co + I_task) F^2
                c_ = co + Ik
                gGk = gt * c_ / sF + gE * kr * c_ * f_ * f_ + g_lam_tot[k] * c_
                g_r = -(gt + gE * P) * gins / (sr * sr) * dr
                g_f = -gt * Gk * c_ / (sF * sF) * dF + gE * 2.0 * kr * Gk * c_ * f_ + g_served[k]
            else:  # D = Gk/r + Gk I_task/F, E = P Gk/r + kr Gk I_task F^2
                gGk = gt * (1.0 / sr + Ik / sF) + gE * (P / sr + kr * Ik * f_ * f_) + g_lam_tot[k] * Ik
                g_r = -(gt + gE * P) * Gk / (sr * sr) * dr
                g_f = -gt * Gk * Ik / (sF * sF) * dF + gE * 2.0 * kr * Gk * Ik * f_ + g_served[k]
            g_split[i, k + 1] = gGk * G
            g_b[i, k] = g_r * rate_c * se[0, i, k]
            g_F[i, k] = g_f
        # bandwidth: floor b_min within 1 over the used links, then the softmax over them
        for k in range(K):
            xl[k], go[k], ub[k] = bwv[0, i, k], g_b[i, k], used[0, i, k]
        _floor_budget_back(xl, ub, pv[P_MINBW], 1.0, go, gx, K)
        s_ = 0.0
        for k in range(K):
            s_ += bwv[0, i, k] * gx[k]
        for k in range(K):
            if ub[k]:
                gth[i, bw0 + k] += bwv[0, i, k] * (gx[k] - s_)
    cap = pv[P_CAP]
    for k in range(K):  # RSU CPU: model.allocate_cpu, then the softmax over its CVs and the idle logit
        load = 0.0
        for i in range(I):
            load += wd[0, i, k]
        L = max(1.0, load)
        for i in range(I):
            xl[i], go[i], ub[i] = cap * wd[0, i, k] / L, g_F[i, k], used[0, i, k]
        _floor_budget_back(xl, ub, pv[P_MINRSU], cap, go, gx, I)
        s_ = 0.0
        for i in range(I):
            s_ += gx[i] * wd[0, i, k]
        for i in range(I):  # gx: d f / d tmp_i -> d f / d w_ik
            gx[i] = cap / L * (gx[i] - (s_ / L if load > 1.0 else 0.0))
        tot = th[I, cpu0 + k]
        for i in range(I):
            if used[0, i, k]:
                tot += th[i, cpu0 + k]
        s_ = 0.0
        for i in range(I):
            if used[0, i, k]:
                s_ += w[0, i, k] * gx[i]
        for i in range(I):
            if used[0, i, k]:
                gth[i, cpu0 + k] += w[0, i, k] * (gx[i] - s_)
        gth[I, cpu0 + k] -= th[I, cpu0 + k] / tot * s_
    for i in range(I):  # split: softmax over the kept parts
        s_ = 0.0
        for k in range(K + 1):
            s_ += split[0, i, k] * g_split[i, k]
        for k in range(K + 1):
            if split[0, i, k] > 0:
                gth[i, sp0 + k] += split[0, i, k] * (g_split[i, k] - s_)
    for q in range(free_idx.shape[0]):
        g[q] = gth[free_idx[q] // D, free_idx[q] % D] if -60.0 < x[q] < 60.0 else 0.0
    return -rw[0]


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


class SlotObjective:
    """The fused form of cosim.optimizer.SlotProblem's objective for one environment: -R(t) of
    parameter vectors (decode, make_decision, slot in one kernel), and its multi-start BFGS."""

    def __init__(self, prob: Any):
        p, st, tk = prob.p, prob.state, prob.tasks
        c = np.ascontiguousarray
        self.pv = param_vector(p)
        self.free_idx = np.flatnonzero(prob.free.ravel()).astype(np.int64)
        self.base = c(prob.base, dtype=float)
        self.split_mask = c(prob.split_mask)
        lay = prob.lay
        self.lay = (lay.split.start, lay.bandwidth.start, lay.cpu.start)
        I = prob.I
        f2 = lambda a: c(np.asarray(a, dtype=float).reshape(1, -1))  # noqa: E731
        self.inputs = (f2(tk.size), f2(tk.instr), f2(tk.intensity), f2(tk.co_intensity), f2(tk.deadline),
                       f2(prob.cv_cpu), c(np.asarray(prob.spec_eff, dtype=float).reshape(1, I, prob.K)),
                       c(prob.active.reshape(1, I)), f2(st.q_loc), f2(st.q_rsu), f2(st.energy),
                       c(st.hist_q_loc, dtype=float), c(st.hist_lam_loc, dtype=float), c(st.hist_q_rsu, dtype=float),
                       c(st.hist_lam_rsu, dtype=float), int(st.t % p.window))
        self.I, self.K = I, prob.K
        self._scratch: tuple | None = None

    def scratch(self, n: int) -> tuple:
        if self._scratch is None or self._scratch[0].shape[1] < n:
            n = max(n, 64)
            I, K = self.I, self.K
            self._scratch = (np.empty((9, n, I, K + 1)), np.empty((3, n, I, K), dtype=bool), np.empty((11, n, I)),
                             np.empty((3, n, K)), np.empty((n, I), dtype=bool), np.empty(n), np.empty(n),
                             np.empty(I), np.empty((I + 1, self.base.shape[1])))
        return self._scratch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=float)
        n = x.shape[0]
        f = np.empty(n)
        sc = self.scratch(n)
        _decode_eval(x, 0, n, self.free_idx, self.base, self.split_mask, *self.lay, self.pv, *self.inputs, f,
                     *sc, sc[-1], np.empty(0))
        return f

    def rewards(self, dec: M.Decision) -> np.ndarray:
        """R(t) of N decisions (N, I, ...)."""
        c = np.ascontiguousarray
        return _rewards_kernel(self.pv, c(dec.split), c(dec.bandwidth), c(dec.cpu), *self.inputs)

    def value_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """-R(t) at one parameter vector x (d,) and its analytic gradient (see _value_grad)."""
        x = np.ascontiguousarray(x, dtype=float)
        g = np.empty(x.shape[0])
        f = _value_grad(x, g, self.free_idx, self.base, self.split_mask, *self.lay, self.pv, *self.inputs,
                        *_grad_workspace(self.I, self.K))
        return float(f), g

    def bfgs(self, x0: np.ndarray, opt: dict[str, Any]) -> tuple:
        S, d = x0.shape
        n = max(S, d, int(opt["line_steps"]), 1)
        return _bfgs_kernel(np.ascontiguousarray(x0, dtype=float), int(opt["iterations"]), int(opt["line_steps"]),
                            float(opt["line_max"]), float(opt["max_step"]), float(opt["fd_step"]), float(opt["bound"]),
                            float(opt["tol"]), int(opt["prune_after"]), float(opt["prune_gap"]),
                            opt["line_search"] == "scan", int(opt["scan_chunk"]), opt["gradient"] == "analytic",
                            self.free_idx, self.base, self.split_mask, *self.lay,
                            self.pv, *self.inputs, *self.scratch(n))
