"""The batch environment's step in numba kernels: the fast path of :class:`cosim.env.BatchCoSim`.

The same numbers as :mod:`cosim.model` loop by loop, without the temporaries numpy needs for every
masked expression: the action projection (C4-C6), the slot (rates, modes, delays, energies, cost,
reward, Little's-law windows, queues) and, at the start of the next slot, the channel and the twin's
observation, written block by block at the offsets of the twin's :class:`~cosim.twin.ObsLayout`.
``tests/test_fused.py`` checks that both agree within 1e-9 relative on random slots (inactive CVs,
uncovered RSUs, non-empty queues).

Every kernel takes a few named records (numba namedtuples): :class:`~cosim.fast.records.Params`,
the slot's inputs (:class:`SlotInputs`), a decision (:class:`DecisionArrays`), the slot's outputs
(:class:`SlotOutputs`, named as :class:`cosim.model.SlotResult`'s fields) and the observation's
block offsets (:class:`ObsOffsets`, from the layout, once per environment).

Random draws (tasks, fading, the twin's noise) stay in numpy, in the same order, so both paths see
the same random streams.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import model as M
from ..config import ConfigError
from .records import EPS, LOGIT_CLIP, Params, njit

_EPS = EPS


class SlotInputs(NamedTuple):
    """One slot's inputs, leading axis E (environments): tasks (E, I), the CVs' CPUs (E, I), spectral
    efficiencies (E, I, K), activity (E, I), queues (E, I), (E, K), (E, I) and their windows (E, m, .)."""

    size: np.ndarray
    instr: np.ndarray
    intensity: np.ndarray
    co_intensity: np.ndarray
    deadline: np.ndarray
    cv_cpu: np.ndarray
    spec_eff: np.ndarray
    active: np.ndarray
    q_loc: np.ndarray
    q_rsu: np.ndarray
    energy: np.ndarray
    hist_q_loc: np.ndarray
    hist_lam_loc: np.ndarray
    hist_q_rsu: np.ndarray
    hist_lam_rsu: np.ndarray


def slot_inputs(state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray, spec_eff: np.ndarray,
                active: np.ndarray) -> SlotInputs:
    """The record of a slot's inputs (the arrays themselves, not copies)."""
    return SlotInputs(tasks.size, tasks.instr, tasks.intensity, tasks.co_intensity, tasks.deadline, cv_cpu,
                      spec_eff, active, state.q_loc, state.q_rsu, state.energy, state.hist_q_loc,
                      state.hist_lam_loc, state.hist_q_rsu, state.hist_lam_rsu)


class DecisionArrays(NamedTuple):
    """A decision (N, I, K+1) split and (N, I, K) bandwidth, CPU request and CPU: cosim.model.Decision."""

    split: np.ndarray
    bandwidth: np.ndarray
    cpu_request: np.ndarray
    cpu: np.ndarray


class SlotOutputs(NamedTuple):
    """model.slot's results for N rows (cosim.model.SlotResult's names) and the next queues."""

    rate: np.ndarray
    instr_mode: np.ndarray
    offloaded: np.ndarray
    upload_delay: np.ndarray
    compute_delay: np.ndarray
    local_delay: np.ndarray
    rsu_delay: np.ndarray
    wait_loc: np.ndarray
    wait_rsu: np.ndarray
    delay: np.ndarray
    energy: np.ndarray
    cost: np.ndarray
    deadline_miss: np.ndarray
    arrivals_loc: np.ndarray
    arrivals_rsu: np.ndarray
    drift_loc: np.ndarray
    drift_rsu: np.ndarray
    drift_energy: np.ndarray
    system_cost: np.ndarray
    reward: np.ndarray
    agent_reward: np.ndarray
    next_q_loc: np.ndarray
    next_q_rsu: np.ndarray
    next_energy: np.ndarray


RESULT_FIELDS = SlotOutputs._fields[:-3]  # the cosim.model.SlotResult fields (besides active)


class ActionColumns(NamedTuple):
    """Where each part of a raw action starts (cosim.model.ActionLayout): split, bandwidth (and its end), CPU."""

    split: int
    bandwidth: int
    bandwidth_end: int
    cpu: int


def action_columns(n_rsus: int) -> ActionColumns:
    lay = M.ActionLayout(n_rsus)
    return ActionColumns(lay.split.start, lay.bandwidth.start, lay.bandwidth.stop, lay.cpu.start)


@njit(cache=True, error_model="numpy")
def _outputs(N, I, K):
    """Fresh SlotOutputs for N rows."""
    # (no lambda for the repeated shapes: numba 0.68 loses writes to arrays a lambda made inside a namedtuple)
    return SlotOutputs(np.empty((N, I, K)), np.empty((N, I, K), dtype=np.bool_), np.empty((N, I, K), dtype=np.bool_),
                       np.empty((N, I, K)), np.empty((N, I, K)), np.empty((N, I)), np.empty((N, I, K)),
                       np.empty((N, I)), np.empty((N, K)), np.empty((N, I)), np.empty((N, I)), np.empty((N, I)),
                       np.empty((N, I), dtype=np.bool_), np.empty((N, I)), np.empty((N, I, K)), np.empty((N, I)),
                       np.empty((N, K)), np.empty((N, I)), np.empty(N), np.empty(N), np.empty((N, I)),
                       np.empty((N, I)), np.empty((N, K)), np.empty((N, I)))


@njit(cache=True, error_model="numpy")
def _decisions(N, I, K):
    """A fresh DecisionArrays for N rows."""
    return DecisionArrays(np.empty((N, I, K + 1)), np.empty((N, I, K)), np.empty((N, I, K)), np.empty((N, I, K)))


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
def make_decision_env(p, split, bandwidth, request, dec, used, tmp, e):
    """model.make_decision for environment (or candidate) ``e``: split (., I, K+1), bandwidth and
    request (., I, K) -> dec's bandwidth, cpu_request and cpu (its split is ``split``); ``used`` (I, K)
    bool and ``tmp`` (I,) are scratch. (Whole arrays and an index rather than slices: a numba slice
    costs reference counting.)"""
    I, K = bandwidth.shape[1], bandwidth.shape[2]
    b_out, w_out, F_out = dec.bandwidth, dec.cpu_request, dec.cpu
    for i in range(I):
        for k in range(K):
            used[i, k] = split[e, i, k + 1] > 0
        _floor_budget_row(bandwidth, used, p.min_bandwidth_share, 1.0, b_out, e, i)
        for k in range(K):
            w_out[e, i, k] = request[e, i, k] if used[i, k] else 0.0
    cap = p.rsu_capacity
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
                total += max(tmp[i], p.min_rsu_share)
        scale = 1.0
        floor = p.min_rsu_share
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
def _project_env(p, ez, covered, active, cols, split, bw, req, e):
    """model.project's per-CV part (softmaxes, masks, dropped parts, sigmoids) for environment ``e``.

    ``ez`` = exp(raw clipped to +-50), computed by numpy in one vectorised pass (so no softmax
    needs its max subtracted: e^50 times K+1 cannot overflow)."""
    I, K = covered.shape[1], covered.shape[2]
    sp0, bw0, bw1, cpu0 = cols.split, cols.bandwidth, cols.bandwidth_end, cols.cpu
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
        _drop_small_parts_row(split, p.min_split_share, e, i)
        tot = 0.0
        for k in range(bw1 - bw0):
            tot += ez[e, i, bw0 + k]
        for k in range(K):
            bw[e, i, k] = ez[e, i, bw0 + k] / tot
        for k in range(K):
            req[e, i, k] = 1.0 / (1.0 + 1.0 / ez[e, i, cpu0 + k])


class ProjectionOptions(NamedTuple):
    """The ``actions.*`` options the projection kernel applies: ``bandwidth: full`` (a CV's whole bandwidth
    over the links it uses, model.full_bandwidth), ``split: balanced`` (model.balance_parts' exact solve,
    ``passes`` times). ``cpu: proportional`` has no kernel (its CPU couples every CV at an RSU to the
    others' shares each pass): the environment runs it in numpy."""

    full_bandwidth: bool
    balanced: bool
    passes: int


def projection_options(p: M.ModelParams) -> ProjectionOptions | None:
    """The kernel's options for ``p``'s ``actions.*``; None where the kernel has none (cpu: proportional)."""
    if p.cpu_mode != "paper":
        return None
    return ProjectionOptions(p.bandwidth_mode == "full", p.split_mode == "balanced", 3)


@njit(cache=True, error_model="numpy", inline="always")
def _full_bandwidth_row(ez, split, bw0, bw, e, i):
    """model.full_bandwidth on row (e, i): the K bandwidth logits' softmax over the links with a part
    (``ez`` = their exponentials, clipped logits: no max to subtract)."""
    K = bw.shape[2]
    tot = 0.0
    for k in range(K):
        if split[e, i, k + 1] > 0:
            tot += ez[e, i, bw0 + k]
    for k in range(K):
        bw[e, i, k] = ez[e, i, bw0 + k] / (tot if tot > 0 else 1.0) if split[e, i, k + 1] > 0 else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def _balanced_parts_env(p, inp, wait, dec, chosen, lines, share, e):
    """One pass of model.project_actions' balanced split on every row (e, i) of environment e: the part
    delay lines at the decision's rates and CPU (model.part_delay_lines), model.balance_parts' Newton
    solve on them, parts below min_split_share dropped from ``chosen`` (I, K) and the rest rescaled to
    the offloaded share; the new parts are written into dec.split[e, i, 1:] (the local share stays).
    Returns whether some row's links in use (parts > 0) or ``chosen`` changed. (One call per
    environment and no helper per row: each call, and each record field read, costs reference
    counting of the arrays.)"""
    I, K = chosen.shape
    split, b, F, se = dec.split, dec.bandwidth, dec.cpu, inp.spec_eff
    size, intensity, co_int, instr = inp.size, inp.intensity, inp.co_intensity, inp.instr
    sg, bw, min_share = p.sensing_gain, p.bandwidth, p.min_split_share
    tiny = 1e-300  # slopes stay positive so that the inverse exists
    changed = False
    for i in range(I):
        G, Ik, Ico, Gins = size[e, i], intensity[e, i], co_int[e, i], instr[e, i]
        L = 1.0 - split[e, i, 0]
        T = -np.inf
        for k in range(K):  # lines of the chosen links (the others are never read): data0, 1/data1, instr0, 1/instr1
            if not chosen[i, k]:
                continue
            rate = sg * b[e, i, k] * bw * se[e, i, k]
            inv_r = 1.0 / max(rate, _EPS)
            inv_f = 1.0 / max(F[e, i, k], _EPS)
            w = wait[e, k]
            data1 = max(G * (inv_r + Ik * inv_f), tiny)
            instr1 = max(G * (Ico + Ik) * inv_f, tiny)
            lines[0, k], lines[1, k] = w, 1.0 / data1
            lines[2, k], lines[3, k] = w + Gins * inv_r, 1.0 / instr1
            # right of the root: every chosen link alone could take all of it by then
            T = max(T, min(w + data1 * L, lines[2, k] + instr1 * L))
        if not math.isfinite(T):
            T = 0.0
        # Newton on sum_k l_k(T) - L (convex, increasing, piecewise linear: exact in at most 3K + 1 steps);
        # the inverse slopes are multiplied, not divided by (within rounding of model.balance_parts' quotients)
        for _ in range(3 * K + 1):
            f, df = -L, 0.0
            for k in range(K):
                if not chosen[i, k]:
                    continue
                l_data, l_instr = (T - lines[0, k]) * lines[1, k], (T - lines[2, k]) * lines[3, k]
                lk = max(l_data, l_instr)
                f += max(0.0, lk)
                if lk > 0:
                    df += lines[3, k] if l_instr > l_data else lines[1, k]
            if not (f > 0 and df > 0):
                break  # T stays: every further step would be this one (numpy's loop runs them all, to the same T)
            T = T - f / df
        tot = 0.0
        for k in range(K):
            share[k] = max(0.0, max((T - lines[0, k]) * lines[1, k], (T - lines[2, k]) * lines[3, k])) \
                if chosen[i, k] else 0.0
            tot += share[k]
        top = 0.0
        for k in range(K):
            share[k] = share[k] * L / tot if tot > 0 else 0.0
            top = max(top, share[k])
        tot = 0.0
        for k in range(K):  # a part too small to be worth a link is dropped (the largest always stays)
            keep = chosen[i, k] and (share[k] >= min_share or share[k] == top)
            changed |= keep != chosen[i, k]
            chosen[i, k] = keep
            share[k] = share[k] if keep else 0.0
            tot += share[k]
        for k in range(K):
            was_used = split[e, i, k + 1] > 0
            split[e, i, k + 1] = share[k] * L / tot if tot > 0 else 0.0
            changed |= (split[e, i, k + 1] > 0) != was_used
    return changed


@njit(cache=True, error_model="numpy")
def _project_rows(p, ez, covered, active, cols, opt, inp, wait):
    """model.project_actions for every row (cpu: paper): exp'd clipped logits (N, I, A) -> a DecisionArrays.
    ``inp`` (the slot's tasks and spectral efficiencies) and ``wait`` (N, K, model.start_of_slot_wait) are
    read by the balanced split only."""
    E, I, K = covered.shape
    dec = _decisions(E, I, K)
    split = dec.split
    bw0 = cols.bandwidth
    bw_raw, req = np.empty((E, I, K)), np.empty((E, I, K))
    used, tmp = np.empty((I, K), dtype=np.bool_), np.empty(I)
    chosen, lines, share = np.empty((I, K), dtype=np.bool_), np.empty((4, K)), np.empty(K)
    for e in range(E):
        _project_env(p, ez, covered, active, cols, split, bw_raw, req, e)
        if opt.full_bandwidth:
            for i in range(I):
                _full_bandwidth_row(ez, split, bw0, bw_raw, e, i)
        make_decision_env(p, split, bw_raw, req, dec, used, tmp, e)
        if not opt.balanced:
            continue
        for i in range(I):
            for k in range(K):
                chosen[i, k] = split[e, i, k + 1] > 0
        for _ in range(opt.passes):
            changed = _balanced_parts_env(p, inp, wait, dec, chosen, lines, share, e)
            if opt.full_bandwidth:
                for i in range(I):
                    _full_bandwidth_row(ez, split, bw0, bw_raw, e, i)
            make_decision_env(p, split, bw_raw, req, dec, used, tmp, e)
            if not changed:
                # Rates and CPU depend on the links in use only (cpu: paper), so the next pass would
                # compute these very parts again: the remaining passes are skipped, bit for bit the same.
                break
    return dec


PAPER_ACTIONS = ProjectionOptions(False, False, 0)


# ---------------------------------------------------------------------------
# One slot (model.slot)

@njit(cache=True, error_model="numpy")
def slot_rows(p, inp, j, e_fixed, n0, n1, dec, out):
    """model.slot for the decisions n0..n1-1 (``dec`` and every field of ``out`` indexed [n]), each in
    environment ``e_fixed`` (the optimiser's candidates) or, if that is < 0, in environment n (the slot's
    inputs ``inp`` and queues indexed [e]). The window row ``j`` is this slot's (not written here).
    One call for many rows: every call of a numba function costs reference counting of its arrays."""
    split, b, F = dec.split, dec.bandwidth, dec.cpu
    size, instr_bits, intensity, co_int = inp.size, inp.instr, inp.intensity, inp.co_intensity
    deadline, cv_cpu, se, active = inp.deadline, inp.cv_cpu, inp.spec_eff, inp.active
    q_loc, q_rsu, energy_q = inp.q_loc, inp.q_rsu, inp.energy
    hq_loc, hl_loc, hq_rsu, hl_rsu = inp.hist_q_loc, inp.hist_lam_loc, inp.hist_q_rsu, inp.hist_lam_rsu
    rate, instr, used, d_up, d_comp = out.rate, out.instr_mode, out.offloaded, out.upload_delay, out.compute_delay
    t_loc, t_rsu, w_loc, w_rsu = out.local_delay, out.rsu_delay, out.wait_loc, out.wait_rsu
    delay, energy, cost, miss = out.delay, out.energy, out.cost, out.deadline_miss
    lam_loc, lam_rsu, drift_loc, drift_rsu = out.arrivals_loc, out.arrivals_rsu, out.drift_loc, out.drift_rsu
    drift_energy, agent_reward = out.drift_energy, out.agent_reward
    nq_loc, nq_rsu, n_energy = out.next_q_loc, out.next_q_rsu, out.next_energy
    system_cost_out, reward_out = out.system_cost, out.reward
    I, K = b.shape[1], b.shape[2]
    lam_tot, served = np.empty(K), np.empty(K)
    m = hq_loc.shape[1]
    tau = p.tau
    P, kr, kc = p.tx_power, p.kappa_rsu, p.kappa_cv
    W, Er = p.W_ref, p.E_ref
    budget = p.energy_budget
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
                r = p.sensing_gain * b[n, i, k] * p.bandwidth * se[e, i, k]
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
            c = (p.alpha * dmax / p.T_ref + (1.0 - p.alpha) * en / Er
                 + p.deadline_penalty * (1.0 if ms else 0.0)) * act
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
            agent_reward[n, i] = -(p.V * c + dl + de + share_term)
            nq_loc[n, i] = max(q_loc[e, i] - cv_cpu[e, i] * tau + lam_loc[n, i], 0.0)
            n_energy[n, i] = max(energy_q[e, i] - budget + en, 0.0)
        system_cost_out[n] = system_cost
        reward_out[n] = -(p.V * system_cost + drift_sum)


@njit(cache=True, error_model="numpy")
def _rewards_kernel(p, inp, j, dec):
    """R(t) of N decisions in environment 0 (model.slot's reward only)."""
    N, I, K = dec.bandwidth.shape
    out = _outputs(N, I, K)
    slot_rows(p, inp, j, 0, 0, N, dec, out)
    return out.reward


def rewards(p: Params, inp: SlotInputs, j: int, dec: M.Decision) -> np.ndarray:
    """R(t) of N decisions (N, I, ...) of one environment's slot (``inp`` with a leading axis of 1)."""
    c = np.ascontiguousarray
    split, b = c(dec.split, dtype=float), c(dec.bandwidth, dtype=float)
    return _rewards_kernel(p, inp, j, DecisionArrays(split, b, b, c(dec.cpu, dtype=float)))


@njit(cache=True, error_model="numpy")
def _step_kernel(p, ez, covered, cols, opt, inp, wait, t):
    """model.project_actions then model.slot for every environment, and the next Little's-law windows."""
    E, I, K = covered.shape
    m = inp.hist_q_loc.shape[1]
    j = t % m
    dec = _project_rows(p, ez, covered, inp.active, cols, opt, inp, wait)
    out = _outputs(E, I, K)
    slot_rows(p, inp, j, -1, 0, E, dec, out)
    nhq_loc, nhl_loc = inp.hist_q_loc.copy(), inp.hist_lam_loc.copy()
    nhq_rsu, nhl_rsu = inp.hist_q_rsu.copy(), inp.hist_lam_rsu.copy()
    for e in range(E):
        for i in range(I):
            nhq_loc[e, j, i] = inp.q_loc[e, i]
            nhl_loc[e, j, i] = out.arrivals_loc[e, i]
        for k in range(K):
            nhq_rsu[e, j, k] = inp.q_rsu[e, k]
            tot = 0.0
            for i in range(I):
                tot += out.arrivals_rsu[e, i, k]
            nhl_rsu[e, j, k] = tot
    return dec, out, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu


def _exp_logits(raw: np.ndarray) -> np.ndarray:
    return np.exp(np.clip(np.nan_to_num(np.asarray(raw, dtype=float)), -LOGIT_CLIP, LOGIT_CLIP))


def project_and_slot(p: M.ModelParams, kp: Params, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
                     spec_eff: np.ndarray, raw: np.ndarray, covered: np.ndarray,
                     active: np.ndarray) -> tuple[M.Decision, M.SlotResult, M.QueueState]:
    """model.project_actions then model.slot, fused: the same Decision, SlotResult and next QueueState.
    ``p``'s actions.cpu must be the paper's (:func:`projection_options`)."""
    opt = projection_options(p)
    if opt is None:
        raise ValueError(f"the fused step has no kernel for actions.cpu = {p.cpu_mode}: use model.project_actions")
    inp = slot_inputs(state, tasks, cv_cpu, spec_eff, active)
    wait = M.start_of_slot_wait(p, state) if opt.balanced else np.zeros((1, p.n_rsus))
    dec, out, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu = _step_kernel(
        kp, _exp_logits(raw), covered, action_columns(p.n_rsus), opt, inp, wait, state.t)
    decision = M.Decision(split=dec.split, bandwidth=dec.bandwidth, cpu_request=dec.cpu_request, cpu=dec.cpu)
    result = M.SlotResult(**{f: getattr(out, f) for f in RESULT_FIELDS}, active=active)
    new = M.QueueState(out.next_q_loc, out.next_q_rsu, out.next_energy, nhq_loc, nhl_loc, nhq_rsu, nhl_rsu,
                       state.t + 1)
    return decision, result, new


def project(p: M.ModelParams, kp: Params, raw: np.ndarray, covered: np.ndarray, active: np.ndarray) -> M.Decision:
    """model.project (the paper's actions), fused."""
    N, I, K = np.shape(covered)
    z = np.zeros((1, 1))
    inp = SlotInputs(z, z, z, z, z, z, np.zeros((1, 1, 1)), np.zeros((1, 1), dtype=bool), z, z, z,
                     np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))
    dec = _project_rows(kp, _exp_logits(raw), np.ascontiguousarray(covered), np.ascontiguousarray(active),
                        action_columns(p.n_rsus), PAPER_ACTIONS, inp, z)
    return M.Decision(split=dec.split, bandwidth=dec.bandwidth, cpu_request=dec.cpu_request, cpu=dec.cpu)


# ---------------------------------------------------------------------------
# The start of a slot: channel (model.horizontal_distance ... spectral_efficiency) and the
# twin's observation (cosim.twin.DigitalTwin.observe with its true DT part)

class ObsOffsets(NamedTuple):
    """Where each observation block starts in the flat vector (cosim.twin.ObsLayout.slices), -1 where the
    twin's view has no such block; ``dim`` the vector's length and ``dt`` the DT part's start."""

    task: int
    position: int
    velocity: int
    covered: int
    distance: int
    spec_eff: int
    queues: int
    rsu_capacity: int
    active: int
    dt_backlog: int
    dt_aggregate: int
    dt_distance_next: int
    dt_others: int
    dt_others_cycles: int
    dt_others_spec_eff: int
    dim: int
    dt: int


OBS_KERNEL_BLOCKS = ObsOffsets._fields[:-2]  # the blocks _channel_obs_kernel writes


def obs_offsets(layout: Any) -> ObsOffsets:
    """The kernel's offsets of a twin layout; a block the kernel does not write is refused in one line
    (give it a kernel here, or run the numpy path: ``BatchCoSim.fused = False``)."""
    sl = layout.slices()
    unknown = [name for name in sl if name not in OBS_KERNEL_BLOCKS]
    missing = [name for name in OBS_KERNEL_BLOCKS if not name.startswith("dt_") and name not in sl]
    if missing:
        raise ConfigError(f"the fused observation needs the block(s) {', '.join(missing)} of every twin view; "
                          f"this layout has {', '.join(sl)}")
    if unknown:
        raise ConfigError(f"observation block(s) {', '.join(unknown)} have no fused kernel (cosim/fast/step.py "
                          f"writes {', '.join(OBS_KERNEL_BLOCKS)}); set BatchCoSim.fused = False for the numpy path")
    return ObsOffsets(*(sl[name].start if name in sl else -1 for name in OBS_KERNEL_BLOCKS), layout.dim,
                      layout.dt_slice.start)


class ObsScales(NamedTuple):
    """The observation's scales (cosim.twin.DigitalTwin.observe): the task ranges' upper ends, C_max, the
    RSU area's centre and half width, the speed scale, SPEC_EFF_SCALE, F_max and OTHERS_SCALE."""

    size: float
    instr: float
    intensity: float
    co_intensity: float
    deadline: float
    cv_cpu: float
    centre_x: float
    centre_y: float
    half_width: float
    speed: float
    spec_eff: float
    rsu_cpu: float
    others: float


def obs_scales(p: M.ModelParams, speed_scale: float) -> ObsScales:
    from ..twin import OTHERS_SCALE, SPEC_EFF_SCALE, area_frame
    hi = lambda r: r[1] if r[1] > 0 else 1.0  # noqa: E731
    centre, half = area_frame(p)
    return ObsScales(hi(p.size_range), hi(p.instr_range), hi(p.intensity_range), hi(p.co_intensity_range),
                     hi(p.deadline_range), p.cv_cpu_range[1], centre[0], centre[1], half, speed_scale,
                     SPEC_EFF_SCALE, p.rsu_cpu, OTHERS_SCALE)


class SlotStart(NamedTuple):
    """What the observation reads besides the channel: the tasks and CV CPUs (E, I), the queues (E, I), (E, K)."""

    size: np.ndarray
    instr: np.ndarray
    intensity: np.ndarray
    co_intensity: np.ndarray
    deadline: np.ndarray
    cv_cpu: np.ndarray
    q_loc: np.ndarray
    q_rsu: np.ndarray
    energy: np.ndarray


class Geometry(NamedTuple):
    """The RSUs (K, 2) positions, (K,) heights and radii, and the CVs' mobility (E, I)."""

    rsu_xy: np.ndarray
    rsu_h: np.ndarray
    rsu_r: np.ndarray
    x: np.ndarray
    y: np.ndarray
    speed: np.ndarray
    heading: np.ndarray
    active: np.ndarray


@njit(cache=True, error_model="numpy")
def _channel_obs_kernel(p, g, fading, inp, sc, off, with_obs):
    """Channel of every link and, if ``with_obs``, the critic's state: the full observation with the
    true DT part (E, I, D) float32, and that DT part (E, I, D - off.dt) float64 (for the twin's fidelity
    options). Blocks are written at ``off``'s offsets; -1: not in this view."""
    E, I = g.x.shape
    K = g.rsu_xy.shape[0]
    # The records' arrays as locals, once: each field read inside a loop would cost reference counting.
    rsu_xy, rsu_h, rsu_r = g.rsu_xy, g.rsu_h, g.rsu_r
    x, y, speed, heading, active = g.x, g.y, g.speed, g.heading, g.active
    size, instr, intensity, co_int, deadline = inp.size, inp.instr, inp.intensity, inp.co_intensity, inp.deadline
    cv_cpu, q_loc, q_rsu, energy_q = inp.cv_cpu, inp.q_loc, inp.q_rsu, inp.energy
    covered = np.empty((E, I, K), dtype=np.bool_)
    d3 = np.empty((E, I, K))
    se = np.empty((E, I, K))
    D = off.dim if with_obs else 0
    n_dt = D - off.dt if with_obs else 0
    state = np.zeros((E, I, D), dtype=np.float32)
    true_dt = np.zeros((E, I, n_dt))
    row = np.zeros(D)
    others, others_cycles, others_se = np.zeros(K), np.zeros(K), np.zeros(K)
    cyc, se_i = np.zeros(I), np.zeros((I, K))
    tau = p.tau
    W, Er = p.W_ref, p.E_ref
    pl0 = p.pathloss_db_1m * math.log(10.0) / 10.0
    pls = p.pathloss_slope_db / 20.0
    glob = off.dt_others >= 0 or off.dt_others_cycles >= 0 or off.dt_others_spec_eff >= 0
    for e in range(E):
        qsum, qmax = 0.0, -np.inf
        if with_obs:
            for k in range(K):
                qk = q_rsu[e, k] / W
                qsum += qk
                qmax = max(qmax, qk)
        for i in range(I):
            a = active[e, i]
            for k in range(K):
                dx = rsu_xy[k, 0] - x[e, i]
                dy = rsu_xy[k, 1] - y[e, i]
                h2 = dx * dx + dy * dy
                covered[e, i, k] = h2 <= rsu_r[k] ** 2 and a
                d2 = h2 + rsu_h[k] ** 2
                d3[e, i, k] = math.sqrt(d2)
                # 10^((a - b log10 d) / 10) = exp(a ln10 / 10 - (b / 20) ln d^2): one log, one exp
                gain = math.exp(pl0 - pls * math.log(d2))
                snr = p.tx_power * fading[e, i, k] * gain / p.noise
                se[e, i, k] = max(math.log2(1.0 + snr), _EPS)
        if not with_obs:
            continue
        if glob:  # twin.view global: per RSU, the sums over every covered active CV (cosim.twin.others_per_rsu)
            for i in range(I):
                act = 1.0 if active[e, i] else 0.0
                cyc[i] = size[e, i] * intensity[e, i] * act / W
                for k in range(K):
                    se_i[i, k] = se[e, i, k] / sc.spec_eff
            for k in range(K):
                others[k], others_cycles[k], others_se[k] = 0.0, 0.0, 0.0
                for i in range(I):
                    cv = 1.0 if (covered[e, i, k] and active[e, i]) else 0.0
                    others[k] += cv
                    others_cycles[k] += cv * cyc[i]
                    others_se[k] += cv * se_i[i, k]
        for i in range(I):
            a = active[e, i]
            act = 1.0 if a else 0.0
            vx = speed[e, i] * math.cos(heading[e, i])
            vy = speed[e, i] * math.sin(heading[e, i])
            c = off.task
            row[c] = size[e, i] / sc.size * act
            row[c + 1] = instr[e, i] / sc.instr * act
            row[c + 2] = intensity[e, i] / sc.intensity * act
            row[c + 3] = co_int[e, i] / sc.co_intensity * act
            row[c + 4] = cv_cpu[e, i] / sc.cv_cpu * act
            row[c + 5] = deadline[e, i] / sc.deadline * act
            row[off.position] = (x[e, i] - sc.centre_x) / sc.half_width * act
            row[off.position + 1] = (y[e, i] - sc.centre_y) / sc.half_width * act
            row[off.velocity] = vx / sc.speed * act
            row[off.velocity + 1] = vy / sc.speed * act
            for k in range(K):
                row[off.covered + k] = 1.0 if covered[e, i, k] else 0.0
                row[off.distance + k] = d3[e, i, k] / rsu_r[k] * act
                row[off.spec_eff + k] = se[e, i, k] / sc.spec_eff * act
                row[off.rsu_capacity + k] = p.rsu_capacity / sc.rsu_cpu
            row[off.queues] = q_loc[e, i] / W
            row[off.queues + 1] = energy_q[e, i] / Er
            row[off.active] = act
            if off.dt_backlog >= 0:
                for k in range(K):
                    row[off.dt_backlog + k] = q_rsu[e, k] / W
            if off.dt_aggregate >= 0:
                row[off.dt_aggregate] = qsum
                row[off.dt_aggregate + 1] = qsum / K
                row[off.dt_aggregate + 2] = qmax
            if off.dt_distance_next >= 0:  # the twin's constant-velocity prediction one slot ahead
                xn = x[e, i] + vx * tau
                yn = y[e, i] + vy * tau
                for k in range(K):
                    dx = rsu_xy[k, 0] - xn
                    dy = rsu_xy[k, 1] - yn
                    row[off.dt_distance_next + k] = math.sqrt(dx * dx + dy * dy + rsu_h[k] ** 2) / rsu_r[k] * act
            if glob:  # the other CVs: all covered CVs but i
                for k in range(K):
                    cv = 1.0 if (covered[e, i, k] and a) else 0.0
                    count = others[k] - cv
                    if off.dt_others >= 0:
                        row[off.dt_others + k] = count / sc.others * act
                    if off.dt_others_cycles >= 0:
                        row[off.dt_others_cycles + k] = (others_cycles[k] - cv * cyc[i]) / sc.others * act
                    if off.dt_others_spec_eff >= 0:
                        s_ = others_se[k] - cv * se_i[i, k]
                        row[off.dt_others_spec_eff + k] = (s_ / max(count, 1.0) if count > 0 else 0.0) * act
            for q in range(D):
                state[e, i, q] = row[q]
            for q in range(n_dt):
                true_dt[e, i, q] = row[off.dt + q]
    return covered, d3, se, state, true_dt


def channel_and_observation(sim: Any) -> None:
    """BatchCoSim._begin_slot after the draws: sets covered, d3, spec_eff, obs and state on ``sim``.

    The twin's staleness, sync-error noise and hidden blocks are applied by DigitalTwin.seen_dt, the
    numpy path's code (same history, same generator), and so is ``twin.info: previous``
    (DigitalTwin.known_dt); the blocks are written at the offsets of the twin's layout
    (``sim._fused_obs``: :func:`obs_offsets`, which refuses a block it has no kernel for)."""
    p, mob, tk, q, twin = sim.params, sim.mob, sim.tasks, sim.queues, sim.twin
    off, sc = sim._fused_obs
    geo = Geometry(p.rsu_xy, p.rsu_height, p.rsu_radius, mob.x, mob.y, mob.speed, mob.heading, mob.active)
    start = SlotStart(tk.size, tk.instr, tk.intensity, tk.co_intensity, tk.deadline, sim.cv_cpu, q.q_loc, q.q_rsu,
                      q.energy)
    covered, d3, se, state, true_dt = _channel_obs_kernel(sim._fused_pv, geo, sim.fading, start, sc, off, True)
    sim.covered, sim.d3, sim.spec_eff = covered, d3, se
    E, I, D = state.shape
    known = _known_dt(twin, true_dt)
    seen = twin.seen_dt(known)  # staleness, sync error, hidden blocks: the numpy path's code
    obs = state.copy()
    if seen is not true_dt:
        obs[..., off.dt:] = seen
    sim.obs, sim.state = obs, state.reshape(E, I * D)


def _known_dt(twin: Any, true_dt: np.ndarray) -> np.ndarray:
    """The DT part the twin knows when the actors decide (DigitalTwin.observe's ``known``): the true one,
    but under ``twin.info: previous`` the global view's blocks are the last slot's."""
    if twin.info != "previous":
        return true_dt
    from ..twin import GLOBAL_NAMES
    sl, base = twin.layout.slices(), twin.layout.dt_slice.start
    cut = {k: slice(sl[k].start - base, sl[k].stop - base) for k in GLOBAL_NAMES}
    known_global = twin._known_global({k: true_dt[..., s].copy() for k, s in cut.items()})
    known = true_dt.copy()
    for k, s in cut.items():
        known[..., s] = known_global[k]
    return known
