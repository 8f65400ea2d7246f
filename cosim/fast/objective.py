"""dpp-opt's per-slot objective in numba: its value, its gradient (derived by hand) and the (L-)BFGS loop.

:class:`SlotObjective` is the compiled form of :class:`cosim.optimizer.SlotProblem`'s objective for one
environment: -R(t) of parameter vectors (the decode, model.make_decision and model.slot's reward in one
pass). The slot is compiled once into constants (:class:`SlotConstants`: per-CV and per-RSU rows, the
per-link rate coefficients, the decision-free part of the drift), so that an evaluation is a single pass
over the links (covered CV-RSU pairs, :class:`Links`: CSR lists by CV and by RSU) with no Little's-law
window sums; its intermediate values stay in a :class:`Workspace` for the reverse-mode gradient. The
workspace entries of uncovered pairs are 0 and never visited. model.slot stays the reference
(``tests/test_fused.py``, ``tests/test_optimizer_fast.py``).

Every kernel takes the :class:`Problem` record (what stays fixed during the solve) and a workspace.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import model as M
from . import step
from .records import EPS, Params, njit, params_of

_EPS = EPS
EXP_CLIP = 60.0  # exp never overflows; the optimiser's logits stay within +-bound (<= 50) anyway


class Links(NamedTuple):
    """The covered pairs of active CVs: CV i's RSUs cv_k[cv_ptr[i]:cv_ptr[i+1]] and RSU k's CVs
    rsu_i[rsu_ptr[k]:rsu_ptr[k+1]], ascending (the order of the dense loops, so the sums are the same)."""

    cv_ptr: np.ndarray
    cv_k: np.ndarray
    rsu_ptr: np.ndarray
    rsu_i: np.ndarray


class CVConstants(NamedTuple):
    """Per CV (I,): task size (0 if inactive), instruction bits, intensities, CPU, activity (1/0), Q_loc / W^2,
    the local window's tau * queue sum and arrivals without this slot, Y / E_ref^2, the deadline."""

    size: np.ndarray
    instr: np.ndarray
    intensity: np.ndarray
    co_intensity: np.ndarray
    cpu: np.ndarray
    active: np.ndarray
    q_loc: np.ndarray
    window_q: np.ndarray
    window_lam: np.ndarray
    energy_q: np.ndarray
    deadline: np.ndarray


class RSUConstants(NamedTuple):
    """Per RSU (K,): Q_rsu / W^2, the window's tau * queue sum and its arrivals without this slot."""

    q: np.ndarray
    window_q: np.ndarray
    window_lam: np.ndarray


class Problem(NamedTuple):
    """What stays fixed while one slot is solved: the free entries of the parameters (flat indices into
    (I+1, 3K+1)), the fixed entries' exponentials ``eb``, the split mask (I, K+1), the links, the action
    columns (split, bandwidth, CPU), the model's parameters, the per-CV and per-RSU constants, the rate
    coefficients (I, K) and f0, the part of the drift no decision changes."""

    free_idx: np.ndarray
    eb: np.ndarray
    split_mask: np.ndarray
    links: Links
    sp0: int
    bw0: int
    cpu0: int
    p: Params
    cv: CVConstants
    rsu: RSUConstants
    rate_coef: np.ndarray
    f0: float


class Workspace(NamedTuple):
    """One candidate's intermediate values, (I, K+1) per link unless said otherwise: the split, the bandwidth
    softmax, b, w, F, each part's delay without the RSU's wait, its arrivals and the adjoints of split, b, F;
    the used links and their InstrT modes (I, K) bool; per CV (I,) arrivals, local delay, local wait,
    energy, slowest part (-1 local, -2 inactive) and window arrivals; per RSU (K,) arrivals, served CPU,
    wait, window arrivals and the adjoints of arrivals, served CPU and wait; a line buffer (max(I, K),);
    the exponentiated parameters th and their gradient gth (I+1, 3K+1)."""

    split: np.ndarray
    bw: np.ndarray
    b: np.ndarray
    w: np.ndarray
    F: np.ndarray
    t_part: np.ndarray
    lam: np.ndarray
    g_split: np.ndarray
    g_b: np.ndarray
    g_F: np.ndarray
    used: np.ndarray
    instr: np.ndarray
    lam_loc: np.ndarray
    t_loc: np.ndarray
    w_loc: np.ndarray
    energy: np.ndarray
    slowest: np.ndarray
    ls_loc: np.ndarray
    lam_rsu: np.ndarray
    served: np.ndarray
    w_rsu: np.ndarray
    ls_rsu: np.ndarray
    g_lam: np.ndarray
    g_served: np.ndarray
    g_w: np.ndarray
    line: np.ndarray
    th: np.ndarray
    gth: np.ndarray


@njit(cache=True, error_model="numpy")
def _workspace(eb):
    """A fresh workspace for the slot whose fixed entries' exponentials are eb (I+1, 3K+1); th starts as eb
    (_exp_params writes only the free entries)."""
    I, K = eb.shape[0] - 1, (eb.shape[1] - 1) // 3
    # (no lambda for the repeated shapes: numba 0.68 loses writes to arrays a lambda made inside a namedtuple)
    return Workspace(np.zeros((I, K + 1)), np.zeros((I, K + 1)), np.zeros((I, K + 1)), np.zeros((I, K + 1)),
                     np.zeros((I, K + 1)), np.zeros((I, K + 1)), np.zeros((I, K + 1)), np.zeros((I, K + 1)),
                     np.zeros((I, K + 1)), np.zeros((I, K + 1)),
                     np.zeros((I, K), dtype=np.bool_), np.zeros((I, K), dtype=np.bool_),
                     np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I),
                     np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K), np.zeros(K),
                     np.zeros(max(I, K)), eb.copy(), np.zeros((I + 1, 3 * K + 1)))


@njit(cache=True, error_model="numpy", inline="always")
def _floor_shrink(split, src, i, k_axis, idx, lo, hi, floor, budget, scale_in):
    """The shrink of _floor_budget's line: (factor on the part above the floor, the room above the floors,
    whether the line is over its budget with room to shrink)."""
    n = 0
    total = 0.0
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        if split[ii, kk + 1] > 0:
            n += 1
            total += max(src[ii, kk] * scale_in, floor)
    scale, over, room = 1.0, False, 1.0
    if total > budget:
        room = total - n * floor
        over = room > 0
        scale = (budget - n * floor) / (room if over else 1.0)
    return scale, room, over


@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget(split, src, dst, i, k_axis, idx, lo, hi, floor, budget, scale_in):
    """model._floor_within_budget along one line: over the RSUs covering CV i (k_axis), or over the CVs
    that RSU i covers; the line's entries are idx[lo:hi] (the links). The source values are multiplied
    by ``scale_in`` first (the CPU allocation's capacity / load). An entry is used where its part of the
    split is > 0; entries off the line are 0 and stay so."""
    scale = _floor_shrink(split, src, i, k_axis, idx, lo, hi, floor, budget, scale_in)[0]
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        dst[ii, kk] = (floor + (max(src[ii, kk] * scale_in, floor) - floor) * scale
                       if split[ii, kk + 1] > 0 else 0.0)


@njit(cache=True, error_model="numpy", inline="always")
def _floor_budget_back(split, src, g_out, i, k_axis, idx, lo, hi, floor, budget, scale_in, line):
    """Adjoint of _floor_budget: d f / d output in g_out -> d f / d (scaled) source into line[a] for the
    line's entries a. Entries held at the floor are constant there; above the budget the shrink factor
    depends on every used entry's floored value."""
    scale, room, over = _floor_shrink(split, src, i, k_axis, idx, lo, hi, floor, budget, scale_in)
    s_ = 0.0
    if over:
        for t in range(lo, hi):
            a = idx[t]
            ii, kk = (i, a) if k_axis else (a, i)
            if split[ii, kk + 1] > 0:
                s_ += g_out[ii, kk] * (max(src[ii, kk] * scale_in, floor) - floor)
        s_ *= scale / room
    for t in range(lo, hi):
        a = idx[t]
        ii, kk = (i, a) if k_axis else (a, i)
        used = split[ii, kk + 1] > 0
        line[a] = g_out[ii, kk] * scale - s_ if (used and src[ii, kk] * scale_in > floor) else 0.0


@njit(cache=True, error_model="numpy", inline="always")
def _drop_small_parts_links(s, min_share, i, cv_ptr, cv_k):
    """model.drop_small_parts on split row i, over the local part and the covered RSUs' (the others are 0)."""
    if min_share <= 0:
        return
    lo, hi = cv_ptr[i], cv_ptr[i + 1]
    m = s[i, 0]
    for t in range(lo, hi):
        m = max(m, s[i, cv_k[t] + 1])
    if not (s[i, 0] >= min_share or s[i, 0] == m):
        s[i, 0] = 0.0
    tot = s[i, 0]
    for t in range(lo, hi):
        c = cv_k[t] + 1
        if not (s[i, c] >= min_share or s[i, c] == m):
            s[i, c] = 0.0
        tot += s[i, c]
    s[i, 0] = s[i, 0] / tot
    for t in range(lo, hi):
        c = cv_k[t] + 1
        s[i, c] = s[i, c] / tot


@njit(cache=True, error_model="numpy")
def _obj_forward(pr, ws):
    """-R(t) of one candidate from its exponentiated parameters ws.th (I+1, 3K+1): the decode
    (cosim.optimizer.SlotProblem.decode), model.make_decision and model.slot's reward, with every
    intermediate the gradient needs left in the workspace.

    Only the links are visited: O(links + I + K) per evaluation; the entries of the other (CV, RSU)
    pairs are 0 in the workspace and stay so."""
    cv_ptr, cv_k, rsu_ptr, rsu_i = pr.links
    p, cv, rsu, RC = pr.p, pr.cv, pr.rsu, pr.rate_coef
    sp0, bw0, cpu0 = pr.sp0, pr.bw0, pr.cpu0
    th, split = ws.th, ws.split
    I, K = pr.split_mask.shape[0], pr.split_mask.shape[1] - 1
    tau, P, kr, kc = p.tau, p.tx_power, p.kappa_rsu, p.kappa_cv
    for i in range(I):  # split: masked softmax, small parts dropped; bandwidth over the RSUs that get a part
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        tot = th[i, sp0]
        split[i, 0] = tot
        for t in range(lo, hi):
            k = cv_k[t]
            v = th[i, sp0 + k + 1]
            split[i, k + 1] = v
            tot += v
        inv = 1.0 / (tot if tot > 0 else 1.0)
        split[i, 0] *= inv
        for t in range(lo, hi):
            split[i, cv_k[t] + 1] *= inv
        _drop_small_parts_links(split, p.min_split_share, i, cv_ptr, cv_k)
        tot = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            v = th[i, bw0 + k] if split[i, k + 1] > 0 else 0.0
            ws.bw[i, k] = v
            tot += v
        inv = 1.0 / (tot if tot > 0 else 1.0)
        for t in range(lo, hi):
            ws.bw[i, cv_k[t]] *= inv
        _floor_budget(split, ws.bw, ws.b, i, True, cv_k, lo, hi, p.min_bandwidth_share, 1.0, 1.0)
    cap = p.rsu_capacity
    for k in range(K):  # RSU CPU: softmax over the CVs offloading there and the idle logit (row I), allocated
        lo, hi = rsu_ptr[k], rsu_ptr[k + 1]
        tot = th[I, cpu0 + k]
        for t in range(lo, hi):
            i = rsu_i[t]
            v = th[i, cpu0 + k] if split[i, k + 1] > 0 else 0.0
            ws.w[i, k] = v
            tot += v
        load = 0.0
        inv = 1.0 / (tot if tot > 0 else 1.0)
        for t in range(lo, hi):
            i = rsu_i[t]
            ws.w[i, k] *= inv
            load += ws.w[i, k]
        _floor_budget(split, ws.w, ws.F, k, False, rsu_i, lo, hi, p.min_rsu_share, cap, cap / max(1.0, load))
    # The slot (model.slot): parts, then the Little's-law windows, delays, cost and drift-plus-penalty.
    f = pr.f0
    for k in range(K):
        ws.lam_rsu[k] = 0.0
        ws.served[k] = 0.0
    for i in range(I):
        a = cv.active[i] > 0
        G, Gins, Ik, co = cv.size[i], cv.instr[i], cv.intensity[i], cv.co_intensity[i]
        e_off = 0.0
        for t in range(cv_ptr[i], cv_ptr[i + 1]):
            k = cv_k[t]
            u = split[i, k + 1] > 0 and a
            ws.used[i, k] = u
            ws.instr[i, k] = False
            ws.t_part[i, k] = 0.0
            ws.lam[i, k] = 0.0
            if not u:
                continue
            Gk = split[i, k + 1] * G
            fF = ws.F[i, k]
            ir = 1.0 / max(RC[i, k] * ws.b[i, k], _EPS)
            iF = 1.0 / max(fF, _EPS)
            d_data = Gk * ir
            co_cycles = Gk * co
            d_instr = Gins * ir + co_cycles * iF
            rsu_cycles = Gk * Ik
            if d_instr < d_data:  # InstrT
                ws.instr[i, k] = True
                ws.t_part[i, k] = d_instr + rsu_cycles * iF
                e_off += P * Gins * ir + kr * (co_cycles + rsu_cycles) * fF * fF
                lam = Gk * (Ik + co)
            else:
                ws.t_part[i, k] = d_data + rsu_cycles * iF
                e_off += P * d_data + kr * rsu_cycles * fF * fF
                lam = Gk * Ik
            ws.lam[i, k] = lam
            ws.lam_rsu[k] += lam
            ws.served[k] += fF
        loc = split[i, 0] * G * Ik
        ws.lam_loc[i] = loc
        ws.energy[i] = (kc * loc * cv.cpu[i] ** 2 + e_off) * cv.active[i]
    for k in range(K):
        ls = ws.lam_rsu[k] + rsu.window_lam[k]
        ws.ls_rsu[k] = ls
        ws.w_rsu[k] = rsu.window_q[k] / ls if ls > 0 else 0.0
        f += rsu.q[k] * (ws.lam_rsu[k] - ws.served[k] * tau)
    V, al, Tr, Er, dlp = p.V, p.alpha, p.T_ref, p.E_ref, p.deadline_penalty
    for i in range(I):
        ws.slowest[i] = -2.0
        if not cv.active[i] > 0:
            continue
        ls = ws.lam_loc[i] + cv.window_lam[i]
        ws.ls_loc[i] = ls
        wl = cv.window_q[i] / ls if ls > 0 else 0.0
        ws.w_loc[i] = wl
        tl = ws.lam_loc[i] / cv.cpu[i] + wl if split[i, 0] > 0 else 0.0
        ws.t_loc[i] = tl
        dmax, slow = tl, -1
        for t in range(cv_ptr[i], cv_ptr[i + 1]):
            k = cv_k[t]
            if ws.used[i, k]:
                tr = ws.t_part[i, k] + ws.w_rsu[k]
                if tr > dmax:
                    dmax, slow = tr, k
        ws.slowest[i] = slow
        en = ws.energy[i]
        c = al * dmax / Tr + (1.0 - al) * en / Er + (dlp if dmax > cv.deadline[i] else 0.0)
        f += V * c + cv.q_loc[i] * ws.lam_loc[i] + cv.energy_q[i] * en
    return f if math.isfinite(f) else np.inf  # a NaN can never win


@njit(cache=True, error_model="numpy")
def _obj_backward(pr, ws):
    """The gradient of _obj_forward's value with respect to the parameters (logits), derived by hand
    (reverse mode) from the intermediates _obj_forward left in the workspace, into ws.gth (I+1, 3K+1).
    Like the forward pass it visits the links only (gth's other entries stay 0).

    The objective is piecewise smooth: which parts are dropped or used, each part's mode (InstrT or
    DataT), the slowest part of each task (the max over parts) and deadline misses are held fixed,
    so on a kink this is the derivative of the piece the point lies on."""
    cv_ptr, cv_k, rsu_ptr, rsu_i = pr.links
    p, cv, rsu, RC = pr.p, pr.cv, pr.rsu, pr.rate_coef
    sp0, bw0, cpu0 = pr.sp0, pr.bw0, pr.cpu0
    th, gth, split, LN = ws.th, ws.gth, ws.split, ws.line
    I, K = pr.split_mask.shape[0], pr.split_mask.shape[1] - 1
    tau, P, kr, kc = p.tau, p.tx_power, p.kappa_rsu, p.kappa_cv
    gd = p.V * p.alpha / p.T_ref          # d f / d delay of an active CV
    ge = p.V * (1.0 - p.alpha) / p.E_ref  # d f / d its energy, through the cost
    for k in range(K):
        ws.g_w[k] = 0.0
    for i in range(I):  # d f / d w_rsu: the tasks whose slowest part is at that RSU
        if ws.slowest[i] >= 0:
            ws.g_w[int(ws.slowest[i])] += gd
    for k in range(K):  # d f / d arrivals (drift and w_rsu = Qc / (arrivals + history)), d f / d F_ik
        ws.g_lam[k] = rsu.q[k] - (ws.g_w[k] * ws.w_rsu[k] / ws.ls_rsu[k] if ws.ls_rsu[k] > 0 else 0.0)
        ws.g_served[k] = -rsu.q[k] * tau
        gth[I, cpu0 + k] = 0.0
    for i in range(I):
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        gth[i, sp0] = 0.0
        ws.g_split[i, 0] = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            gth[i, sp0 + k + 1] = 0.0
            gth[i, bw0 + k] = 0.0
            gth[i, cpu0 + k] = 0.0
            ws.g_split[i, k + 1] = 0.0
            ws.g_b[i, k] = 0.0
            ws.g_F[i, k] = 0.0
        if not cv.active[i] > 0:
            continue
        G, Gins, Ik, co, cpu = cv.size[i], cv.instr[i], cv.intensity[i], cv.co_intensity[i], cv.cpu[i]
        gE = ge + cv.energy_q[i]
        slow = int(ws.slowest[i])
        g_tl = gd if (slow == -1 and split[i, 0] > 0) else 0.0
        ls = ws.ls_loc[i]
        g_cyc = (cv.q_loc[i] - (g_tl * ws.w_loc[i] / ls if ls > 0 else 0.0)  # drift, w_loc
                 + g_tl / cpu + gE * kc * cpu * cpu)                        # delay, energy
        ws.g_split[i, 0] = g_cyc * G * Ik
        for t in range(lo, hi):
            k = cv_k[t]
            if not ws.used[i, k]:
                continue
            Gk, r_, f_ = split[i, k + 1] * G, RC[i, k] * ws.b[i, k], ws.F[i, k]
            sr, sF = max(r_, _EPS), max(f_, _EPS)
            dr = 1.0 if r_ > _EPS else 0.0
            dF = 1.0 if f_ > _EPS else 0.0
            gt = gd if slow == k else 0.0
            if ws.instr[i, k]:  # InstrT: D = G_ins/r + Gk (I_co + I_task)/F, E = P G_ins/r + kr Gk (I_co + I_task) F^2
                c_ = co + Ik
                gGk = gt * c_ / sF + gE * kr * c_ * f_ * f_ + ws.g_lam[k] * c_
                g_r = -(gt + gE * P) * Gins / (sr * sr) * dr
                g_f = -gt * Gk * c_ / (sF * sF) * dF + gE * 2.0 * kr * Gk * c_ * f_ + ws.g_served[k]
            else:  # DataT: D = Gk/r + Gk I_task/F, E = P Gk/r + kr Gk I_task F^2
                gGk = gt * (1.0 / sr + Ik / sF) + gE * (P / sr + kr * Ik * f_ * f_) + ws.g_lam[k] * Ik
                g_r = -(gt + gE * P) * Gk / (sr * sr) * dr
                g_f = -gt * Gk * Ik / (sF * sF) * dF + gE * 2.0 * kr * Gk * Ik * f_ + ws.g_served[k]
            ws.g_split[i, k + 1] = gGk * G
            ws.g_b[i, k] = g_r * RC[i, k]
            ws.g_F[i, k] = g_f
        # bandwidth: back through the floor b_min within 1, then the softmax over the used links
        _floor_budget_back(split, ws.bw, ws.g_b, i, True, cv_k, lo, hi, p.min_bandwidth_share, 1.0, 1.0, LN)
        s_ = 0.0
        for t in range(lo, hi):
            k = cv_k[t]
            s_ += ws.bw[i, k] * LN[k]
        for t in range(lo, hi):
            k = cv_k[t]
            if split[i, k + 1] > 0:
                gth[i, bw0 + k] += ws.bw[i, k] * (LN[k] - s_)
    cap = p.rsu_capacity
    for k in range(K):  # RSU CPU: back through the allocation (floor within capacity, 1/load), then the softmax
        lo, hi = rsu_ptr[k], rsu_ptr[k + 1]
        load, tot = 0.0, th[I, cpu0 + k]
        for t in range(lo, hi):
            i = rsu_i[t]
            load += ws.w[i, k]
            if split[i, k + 1] > 0:
                tot += th[i, cpu0 + k]
        L = max(1.0, load)
        _floor_budget_back(split, ws.w, ws.g_F, k, False, rsu_i, lo, hi, p.min_rsu_share, cap, cap / L, LN)
        s_ = 0.0
        if load > 1.0:
            for t in range(lo, hi):
                i = rsu_i[t]
                s_ += LN[i] * ws.w[i, k] / L
        for t in range(lo, hi):  # d f / d w_ik
            i = rsu_i[t]
            LN[i] = cap / L * (LN[i] - s_)
        s_ = 0.0
        for t in range(lo, hi):
            i = rsu_i[t]
            if split[i, k + 1] > 0:
                s_ += ws.w[i, k] * LN[i]
        for t in range(lo, hi):
            i = rsu_i[t]
            if split[i, k + 1] > 0:
                gth[i, cpu0 + k] += ws.w[i, k] * (LN[i] - s_)
        gth[I, cpu0 + k] -= th[I, cpu0 + k] / tot * s_
    for i in range(I):  # split: the softmax over the kept parts
        lo, hi = cv_ptr[i], cv_ptr[i + 1]
        s_ = split[i, 0] * ws.g_split[i, 0]
        for t in range(lo, hi):
            c = cv_k[t] + 1
            s_ += split[i, c] * ws.g_split[i, c]
        if split[i, 0] > 0:
            gth[i, sp0] += split[i, 0] * (ws.g_split[i, 0] - s_)
        for t in range(lo, hi):
            c = cv_k[t] + 1
            if split[i, c] > 0:
                gth[i, sp0 + c] += split[i, c] * (ws.g_split[i, c] - s_)


@njit(cache=True, error_model="numpy")
def _slot_constants(p, inp, j):
    """One environment's slot (a SlotInputs with a leading axis of 1) -> the per-CV and per-RSU constants,
    the rate coefficients and f0, the part of the drift no decision changes
    (-sum_i Q_loc C_i tau / W^2 - sum_i Y_i E_max / E_ref^2). The Little's-law windows hold this slot in
    row j: their queue sums are fixed, their arrival sums are the history's plus this slot's."""
    I, K = inp.spec_eff.shape[1], inp.spec_eff.shape[2]
    m = inp.hist_q_loc.shape[1]
    W, Er, tau = p.W_ref, p.E_ref, p.tau
    cv = CVConstants(np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I),
                     np.zeros(I), np.zeros(I), np.zeros(I), np.zeros(I))
    rsu = RSUConstants(np.zeros(K), np.zeros(K), np.zeros(K))
    RC = np.empty((I, K))
    f0 = 0.0
    for i in range(I):
        act = 1.0 if inp.active[0, i] else 0.0
        cv.size[i] = inp.size[0, i] * act
        cv.instr[i], cv.intensity[i], cv.co_intensity[i] = inp.instr[0, i], inp.intensity[0, i], inp.co_intensity[0, i]
        cv.cpu[i], cv.active[i], cv.deadline[i] = inp.cv_cpu[0, i], act, inp.deadline[0, i]
        cv.q_loc[i] = inp.q_loc[0, i] / W / W
        cv.energy_q[i] = inp.energy[0, i] / Er / Er
        qs, ls = 0.0, 0.0
        for r in range(m):
            qs += inp.q_loc[0, i] if r == j else inp.hist_q_loc[0, r, i]
            ls += 0.0 if r == j else inp.hist_lam_loc[0, r, i]
        cv.window_q[i], cv.window_lam[i] = tau * qs, ls
        f0 -= cv.q_loc[i] * inp.cv_cpu[0, i] * tau + cv.energy_q[i] * p.energy_budget
        for k in range(K):
            RC[i, k] = p.sensing_gain * p.bandwidth * inp.spec_eff[0, i, k]
    for k in range(K):
        rsu.q[k] = inp.q_rsu[0, k] / W / W
        qs, ls = 0.0, 0.0
        for r in range(m):
            qs += inp.q_rsu[0, k] if r == j else inp.hist_q_rsu[0, r, k]
            ls += 0.0 if r == j else inp.hist_lam_rsu[0, r, k]
        rsu.window_q[k], rsu.window_lam[k] = tau * qs, ls
    return cv, rsu, RC, f0


@njit(cache=True, error_model="numpy", inline="always")
def _exp_params(x, pr, th):
    """th = exp(parameters): the free entries exp(x) (clipped to +-60: no overflow); the fixed
    ones hold their exponentials eb already (_workspace), nothing writes them. O(d), not O(I K)."""
    D = th.shape[1]
    for q in range(pr.free_idx.shape[0]):
        th[pr.free_idx[q] // D, pr.free_idx[q] % D] = math.exp(min(max(x[q], -EXP_CLIP), EXP_CLIP))


@njit(cache=True, error_model="numpy")
def _decision_at(x, pr):
    """The decision at one parameter vector: split (I, K+1), bandwidth, CPU request and CPU (I, K)."""
    K = pr.split_mask.shape[1] - 1
    ws = _workspace(pr.eb)
    _exp_params(x, pr, ws.th)
    _obj_forward(pr, ws)
    return ws.split.copy(), ws.b[:, :K].copy(), ws.w[:, :K].copy(), ws.F[:, :K].copy()


@njit(cache=True, error_model="numpy")
def _eval_rows(X, f_out, pr):
    """-R(t) of every row of X into f_out."""
    ws = _workspace(pr.eb)
    for n in range(X.shape[0]):
        _exp_params(X[n], pr, ws.th)
        f_out[n] = _obj_forward(pr, ws)


@njit(cache=True, error_model="numpy")
def _probe_kernel(x, u, B, pr):
    """cosim.optimizer._probe's candidates and values: each direction u[n] (any length) is tried + and - at
    a step of 1e-1, 1e-2 or 1e-3 (n mod 3) around x, clipped to [-B, B]. Returns the best candidate and
    its value."""
    n_dirs, d = u.shape
    ws = _workspace(pr.eb)
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
            _exp_params(xc, pr, ws.th)
            fc = _obj_forward(pr, ws)
            if fc < fb:
                fb = fc
                xb[:] = xc
    return xb, fb


@njit(cache=True, error_model="numpy", inline="always")
def _gradient_out(x, pr, gth, g):
    """The free entries' gradient from gth into g (0 where the logit sits at exp's clip)."""
    D = gth.shape[1]
    for q in range(pr.free_idx.shape[0]):
        g[q] = gth[pr.free_idx[q] // D, pr.free_idx[q] % D] if -EXP_CLIP < x[q] < EXP_CLIP else 0.0


@njit(cache=True, error_model="numpy")
def _value_grad(x, g, pr, ws):
    """-R(t) at x (returned) and its analytic gradient into g (zeros where the value is not finite)."""
    _exp_params(x, pr, ws.th)
    f = _obj_forward(pr, ws)
    if not math.isfinite(f):
        g[:] = 0.0
        return f
    _obj_backward(pr, ws)
    _gradient_out(x, pr, ws.gth, g)
    return f


class BfgsSettings(NamedTuple):
    """cosim.optimizer.DppOptConfig's BFGS settings: the iteration cap, the line search's steps
    (line_max * 2^-j, j < line_steps; ``first``: take the first that improves, else the grid's best),
    the longest step, the box [-bound, bound], the tolerance, the pruning and ``memory``
    (< 0: the dense inverse Hessian; >= 0: L-BFGS pairs, 0 every one since the last reset)."""

    iterations: int
    line_steps: int
    line_max: float
    max_step: float
    bound: float
    tol: float
    prune_after: int
    prune_gap: float
    first: bool
    memory: int


@njit(cache=True, error_model="numpy")
def _bfgs_kernel(x0, s, pr):
    """cosim.optimizer.bfgs_multistart, loop for loop, on the compiled objective with its analytic
    gradient (one forward and one backward pass). Returns x, f, f0, status (0 iteration cap, 1 converged,
    2 pruned), last_gain, iterations, the number of objective evaluations and of analytic gradients.

    ``s.memory`` < 0: the dense inverse Hessian H (O(d^2) per iteration); m >= 0: limited-memory BFGS, H
    applied to the gradient by the two-loop recursion over the last m steps and gradient changes (0:
    every one since the last reset) on the identity (O(pairs d) per iteration). With every pair kept it
    is the dense method's H, so the same iterates within rounding. A reset (failed line search) forgets
    the pairs, as the dense method sets H = identity."""
    S, d = x0.shape
    B, tol = s.bound, s.tol
    ws = _workspace(pr.eb)
    th = ws.th
    x = np.empty((S, d))
    for s_ in range(S):
        for q in range(d):
            x[s_, q] = min(max(x0[s_, q], -B), B)
    f = np.empty(S)
    n_evals, n_grads = 0, 0
    for s_ in range(S):
        _exp_params(x[s_], pr, th)
        f[s_] = _obj_forward(pr, ws)
    n_evals += S
    fstart = f.copy()
    status = np.zeros(S, np.int64)
    last_gain = np.full(S, np.nan)
    iters = np.zeros(S, np.int64)
    if d == 0:
        status[:] = 1
        return x, f, fstart, status, np.zeros(S), iters, n_evals, n_grads
    g = np.empty((S, d))
    dense = s.memory < 0
    H = np.zeros((S, d, d) if dense else (S, 1, 1))
    # L-BFGS pairs: a ring of the last m steps and gradient changes per start (every step: m = iterations)
    m = s.memory if s.memory > 0 else max(s.iterations, 1)
    if dense:
        m = 1
    Sm, Ym = np.empty((S, m, d)), np.empty((S, m, d))
    rho_m, al_m = np.empty((S, m)), np.empty(m)
    n_pairs, head = np.zeros(S, np.int64), np.zeros(S, np.int64)
    for s_ in range(S):
        _value_grad(x[s_], g[s_], pr, ws)
        n_grads += 1
        if dense:
            for q in range(d):
                H[s_, q, q] = 1.0
    fresh = np.ones(S, np.bool_)
    alive = np.ones(S, np.bool_)
    alphas = np.empty(s.line_steps)
    for a in range(s.line_steps):
        alphas[a] = s.line_max * 2.0 ** (-a)
    pdir = np.empty(d)
    xp = np.empty(d)
    gn = np.empty(d)
    sv = np.empty(d)
    yv = np.empty(d)
    Hy = np.empty(d)
    xn = np.empty(d)
    for it in range(s.iterations):
        if it >= s.prune_after:
            fb = np.inf
            for s_ in range(S):
                fb = min(fb, f[s_])
            for s_ in range(S):
                if alive[s_] and f[s_] > fb + s.prune_gap * abs(fb):
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
            sc_ = min(1.0, s.max_step / max(math.sqrt(nrm), 1e-300))
            for q in range(d):
                pdir[q] *= sc_
            best = np.inf
            last_best = False  # the workspace holds the best step's forward pass
            for a in range(s.line_steps):
                for q in range(d):
                    xp[q] = min(max(x[s_, q] + alphas[a] * pdir[q], -B), B)
                _exp_params(xp, pr, th)
                fa = _obj_forward(pr, ws)
                n_evals += 1
                last_best = fa < best
                if fa < best:
                    best = fa
                    for q in range(d):
                        xn[q] = xp[q]
                    if s.first and best < f[s_] - tol * abs(f[s_]):
                        break  # first: the first step that improves
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
            if last_best:  # only the backward pass is left
                _obj_backward(pr, ws)
                _gradient_out(xn, pr, ws.gth, gn)
            else:
                _value_grad(xn, gn, pr, ws)
            n_grads += 1
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


def _links(cov: np.ndarray) -> Links:
    ci, ck = np.nonzero(cov)
    kk, ii = np.nonzero(cov.T)
    ptr = lambda idx, n: np.searchsorted(idx, np.arange(n + 1)).astype(np.int64)  # noqa: E731
    return Links(ptr(ci, cov.shape[0]), ck.astype(np.int64), ptr(kk, cov.shape[1]), ii.astype(np.int64))


class SlotObjective:
    """The compiled objective of one cosim.optimizer.SlotProblem: -R(t) of parameter vectors, its
    analytic gradient, the decision at a point, the final probe and the multi-start (L-)BFGS."""

    def __init__(self, prob: Any):
        p, st, tk = prob.p, prob.state, prob.tasks
        c = np.ascontiguousarray
        self.params = kp = params_of(p)
        split_mask = c(prob.split_mask)
        I, K = prob.I, prob.K
        f2 = lambda a: c(np.asarray(a, dtype=float).reshape(1, -1))  # noqa: E731
        self.j = int(st.t % p.window)
        self.inputs = step.SlotInputs(
            f2(tk.size), f2(tk.instr), f2(tk.intensity), f2(tk.co_intensity), f2(tk.deadline), f2(prob.cv_cpu),
            c(np.asarray(prob.spec_eff, dtype=float).reshape(1, I, K)), c(prob.active.reshape(1, I)),
            f2(st.q_loc), f2(st.q_rsu), f2(st.energy), c(st.hist_q_loc, dtype=float),
            c(st.hist_lam_loc, dtype=float), c(st.hist_q_rsu, dtype=float), c(st.hist_lam_rsu, dtype=float))
        cv, rsu, RC, f0 = _slot_constants(kp, self.inputs, self.j)
        lay = prob.lay
        self.problem = Problem(
            np.flatnonzero(prob.free.ravel()).astype(np.int64),
            np.exp(np.clip(np.asarray(prob.base, dtype=float), -EXP_CLIP, EXP_CLIP)),  # fixed entries' exponentials
            split_mask, _links(split_mask[:, 1:]), lay.split.start, lay.bandwidth.start, lay.cpu.start,
            kp, cv, rsu, RC, f0)
        self.I, self.K = I, K

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=float)
        f = np.empty(x.shape[0])
        _eval_rows(x, f, self.problem)
        return f

    def decision(self, x: np.ndarray) -> M.Decision:
        """The decision (leading axis 1) at one parameter vector x (d,)."""
        split, b, w, F = _decision_at(np.ascontiguousarray(x, dtype=float), self.problem)
        return M.Decision(split=split[None], bandwidth=b[None], cpu_request=w[None], cpu=F[None])

    def probe(self, x: np.ndarray, u: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
        """The best of x +- s u_n (s = 1e-1, 1e-2, 1e-3 by turns, u normalised) and its value."""
        xb, fb = _probe_kernel(np.ascontiguousarray(x, dtype=float), np.ascontiguousarray(u, dtype=float),
                               float(bound), self.problem)
        return xb, float(fb)

    def rewards(self, dec: M.Decision) -> np.ndarray:
        """R(t) of N decisions (N, I, ...) (model.slot's reward, fused)."""
        return step.rewards(self.params, self.inputs, self.j, dec)

    def value_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """-R(t) at one parameter vector x (d,) and its analytic gradient (_obj_backward)."""
        x = np.ascontiguousarray(x, dtype=float)
        g = np.empty(x.shape[0])
        f = _value_grad(x, g, self.problem, _workspace(self.problem.eb))
        return float(f), g

    def bfgs(self, x0: np.ndarray, opt: dict[str, Any]) -> tuple:
        s = BfgsSettings(int(opt["iterations"]), int(opt["line_steps"]), float(opt["line_max"]),
                         float(opt["max_step"]), float(opt["bound"]), float(opt["tol"]), int(opt["prune_after"]),
                         float(opt["prune_gap"]), opt["line_search"] == "first",
                         int(opt["memory"]) if opt["method"] == "lbfgs" else -1)
        return _bfgs_kernel(np.ascontiguousarray(x0, dtype=float), s, self.problem)
