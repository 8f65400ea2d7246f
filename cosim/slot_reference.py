"""A reference for the per-slot problem P2: dpp-opt's thorough mode and a certified lower bound.

dpp-opt (:class:`cosim.optimizer.DppOptimizer`) is a multi-start local method: on the congested
preset its starts disagree, so "the gap to the optimiser" is a gap to a heuristic unless something
says how far that heuristic is from the slot's optimum. This module gives two numbers per slot,
from the optimiser's public API only (``DppOptimizer.solve``, ``SlotProblem``, ``bfgs_multistart``):

* :class:`ThoroughOptimizer` (an upper bound on the optimum, a decision the environment can take):
  dpp-opt with its defaults, then many more starts (the three references, random perturbations of
  the load-balanced heuristic at three scales, uniform random logits) run to 400 iterations without
  pruning, then basin hopping: rounds of perturbations of the best point at three scales, each
  re-optimised, kept when better. Its value is never worse than dpp-opt's on the slot (it starts
  from dpp-opt's answer and keeps it unless something better is found).
* :func:`slot_lower_bound` (a certified lower bound: no decision of the slot has a smaller -R(t)).
  The relaxation, each step of which can only lower the objective:

  1. RSU CPU: every CV may use the whole free capacity F_max - C_twin of each RSU at once in its
     compute delays (C6's sharing dropped), the RSU's F² energy terms are dropped (>= 0), and the
     served work in each RSU's drift term is its whole capacity (Σ_i F_ik τ <= (F_max - C_twin) τ).
  2. Bandwidth: every link gets the CV's whole bandwidth at once (C4's Σ_k b_ik <= 1 dropped), so
     each rate is its largest, Θ B log2(1 + SNR).
  3. Queueing delays: Little's law W = τ ΣQ / Σλ falls as this slot's arrivals rise, so W is taken
     with the largest arrivals this slot can bring (every covered CV's whole task, InstrT).
  4. The mode: the twin picks InstrT or DataT by delay; the bound takes whichever gives the lower
     objective. The deadline penalty (>= 0) is dropped.

  With the RSU CPU, rates and waits fixed that way the slot separates into one problem per CV: for
  each choice of which parts are used and in which mode (3^links x 2 at most), a linear programme in
  the split shares and the latency T_i = max over used parts (each part's latency is affine in its
  share), solved exactly with HiGHS (scipy.optimize.linprog). The bound is the sum of the CVs'
  minima and the constants. It is tight where CVs do not compete for RSU CPU or bandwidth, and
  loose where they do (congested): there it certifies little, which the docs say.

The report charge of ``twin.info: reported`` is not modelled here (the bound is for the oracle
slot, ``signalling`` None).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linprog

from . import model as M
from .optimizer import REFERENCES, DppOptimizer, SlotProblem, bfgs_multistart, raw_from_decision
from .policies import REFERENCE_POLICIES

# The thorough mode's options (training.extra.dpp_opt keys) for its own BFGS rounds: long runs, no pruning.
THOROUGH_BFGS = {"iterations": 400, "prune_after": 100_000, "prune_gap": 1e6}


@dataclass(frozen=True)
class ThoroughConfig:
    """How hard the thorough mode searches (per slot)."""

    random_starts: int = 48        # perturbed heuristic starts, a third at each of ``sigmas``
    uniform_starts: int = 16       # logits uniform in [-bound, bound]
    sigmas: tuple[float, ...] = (0.5, 1.5, 4.0)
    hops: int = 4                  # basin-hopping rounds around the best point
    hop_starts: int = 12           # perturbations per round (a third at each of hop_sigmas)
    hop_sigmas: tuple[float, ...] = (0.3, 1.0, 3.0)


class ThoroughOptimizer:
    """dpp-opt's thorough mode: a much wider search of the same slot problem (see the module doc).

    ``solve`` takes one environment's slot as :meth:`DppOptimizer.solve` does and returns the raw
    actions, the objective -R(t) the environment would give them (projected as it will), and
    dpp-opt's own objective on the slot (defaults, the same references)."""

    def __init__(self, seed: int = 0, config: ThoroughConfig | None = None, **dpp_options: Any):
        self.config = config or ThoroughConfig()
        self.dpp = DppOptimizer(seed=seed, **dpp_options)
        self.rng = np.random.default_rng(seed + 7_919)

    def solve(self, p: M.ModelParams, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
              spec_eff: np.ndarray, covered: np.ndarray, active: np.ndarray,
              ref_raw: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
        """One environment's slot (leading axis 1): (raw actions (I, 3K+2), thorough objective,
        dpp-opt's objective)."""
        p = paper_params(p)
        raw_d, st = self.dpp.solve(p, state, tasks, cv_cpu, spec_eff, covered, active, ref_raw)
        f_dpp = float(st["objective"])
        opt = dict(self.dpp.options, **THOROUGH_BFGS)
        prob = SlotProblem(p, state, tasks, cv_cpu, spec_eff, covered, active, bound=float(opt["bound"]))
        if bool(opt["fused"]):
            try:
                prob.use_fused()
            except Exception:  # noqa: BLE001 - numba missing: the numpy path gives the same numbers
                prob.fused = None
        I, K, d, B = prob.I, prob.K, prob.d, prob.bound
        if d == 0:
            return raw_d, f_dpp, f_dpp
        cov1, act1 = np.asarray(covered, bool).reshape(1, I, K), np.asarray(active, bool).reshape(1, I)

        def project(raw: np.ndarray) -> M.Decision:
            n = raw.shape[0]
            return M.project(p, raw, np.broadcast_to(cov1, (n, I, K)), np.broadcast_to(act1, (n, I)))

        c = self.config
        starts = [prob.encode(project(raw_d[None])), prob.heuristic()]
        if ref_raw is not None:
            ref_dec = project(np.asarray(ref_raw))
            starts += [prob.encode(ref_dec, j) for j in range(len(REFERENCES))]
        th_h = prob.theta(prob.heuristic())
        for j in range(c.random_starts):
            th = th_h + c.sigmas[j % len(c.sigmas)] * self.rng.standard_normal(th_h.shape)
            th[:I, 0] = self.rng.uniform(-6.0, 2.0, I)  # from none to much local work
            starts.append(np.clip(prob.x_of(th), -B, B))
        starts += list(self.rng.uniform(-B, B, (c.uniform_starts, d)))
        run = bfgs_multistart(prob, np.array(starts).reshape(len(starts), d), opt)
        b = int(np.argmin(run["f"]))
        x_b, f_b = run["x"][b].copy(), float(run["f"][b])
        for _ in range(c.hops):
            sig = np.repeat(np.array(c.hop_sigmas), -(-c.hop_starts // len(c.hop_sigmas)))[:c.hop_starts]
            cand = np.clip(x_b[None] + sig[:, None] * self.rng.standard_normal((c.hop_starts, d)), -B, B)
            hop = bfgs_multistart(prob, cand, opt)
            h = int(np.argmin(hop["f"]))
            if hop["f"][h] < f_b:
                x_b, f_b = hop["x"][h].copy(), float(hop["f"][h])
        # Raw actions, projected as the environment will, and kept only if better than dpp-opt's.
        dec = prob.decision(x_b)
        raw = raw_from_decision(p, dec.split, dec.bandwidth, dec.cpu_request)[0]
        f_t = float(prob.evaluate_decision(project(raw[None]))[0])
        if not f_t < f_dpp:
            return raw_d, f_dpp, f_dpp
        return raw, f_t, f_dpp


def paper_params(p: M.ModelParams) -> M.ModelParams:
    """``p`` under the paper's action parameterisation: the slot problem dpp-opt and the bound solve.
    Every ``actions.*`` option's decisions are among its decisions (docs/action_options.md), so its
    optimum bounds theirs from below."""
    return p if p.paper_actions else replace(p, bandwidth_mode="paper", split_mode="paper", cpu_mode="paper")


def _lp_min(A: float, a: np.ndarray, c: np.ndarray, e: np.ndarray) -> float:
    """min A T + e.l  s.t.  T >= a_j l_j + c_j,  sum l = 1,  l >= 0 (variables l_1..l_n, T)."""
    n = a.size
    if n == 1:
        return float(A * (a[0] + c[0]) + e[0])
    obj = np.concatenate([e, [A]])
    A_ub = np.zeros((n, n + 1))
    A_ub[np.arange(n), np.arange(n)] = a
    A_ub[:, n] = -1.0
    A_eq = np.concatenate([np.ones(n), [0.0]])[None]
    res = linprog(obj, A_ub=A_ub, b_ub=-c, A_eq=A_eq, b_eq=[1.0],
                  bounds=[(0.0, None)] * n + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"slot_lower_bound: the per-CV linear programme failed ({res.message})")
    return float(res.fun)


def slot_lower_bound(p: M.ModelParams, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
                     spec_eff: np.ndarray, covered: np.ndarray, active: np.ndarray, cpu_levels: int = 6) -> float:
    """A certified lower bound on -R(t) over every decision of one environment's slot (arrays with a
    leading axis of 1, as :meth:`DppOptimizer.solve` takes them). See the module doc."""
    I, K = int(np.shape(cv_cpu)[-1]), p.n_rsus
    act = np.asarray(active, bool).reshape(I)
    cov = np.asarray(covered, bool).reshape(I, K) & act[:, None]
    G = np.asarray(tasks.size, float).reshape(I) * act
    G_ins = np.asarray(tasks.instr, float).reshape(I)
    inten = np.asarray(tasks.intensity, float).reshape(I)
    co = np.asarray(tasks.co_intensity, float).reshape(I)
    C = np.asarray(cv_cpu, float).reshape(I)
    se = np.asarray(spec_eff, float).reshape(I, K)
    q_loc = np.asarray(state.q_loc, float).reshape(I)
    q_rsu = np.asarray(state.q_rsu, float).reshape(K)
    Y = np.asarray(state.energy, float).reshape(I)
    W2, E2 = p.W_ref ** 2, p.E_ref ** 2
    Fcap = p.rsu_capacity
    j = state.t % p.window

    # Little's-law waits at their smallest: this slot's arrivals at their largest.
    def wait_lb(hist_q: np.ndarray, hist_lam: np.ndarray, q_now: np.ndarray, lam_max: np.ndarray) -> np.ndarray:
        hq, hl = np.array(hist_q, float).reshape(p.window, -1), np.array(hist_lam, float).reshape(p.window, -1)
        hq[j], hl[j] = q_now, lam_max
        qs, ls = hq.sum(0), hl.sum(0)
        return np.where(ls > 0, p.tau * qs / np.where(ls > 0, ls, 1.0), 0.0)

    w_loc = wait_lb(state.hist_q_loc, state.hist_lam_loc, q_loc, G * inten)
    w_rsu = wait_lb(state.hist_q_rsu, state.hist_lam_rsu, q_rsu, (cov * (G * (inten + co))[:, None]).sum(0))

    # Constants: the served-work parts of the drift terms at their most negative, the energy budget.
    total = float(-(q_loc * C * p.tau).sum() / W2 - (q_rsu * Fcap * p.tau).sum() / W2
                  - (Y * p.energy_budget).sum() / E2)
    A = p.V * p.alpha / p.T_ref
    # RSU CPU intervals: [0, Fcap 2^-(m-1)], ..., [Fcap/2, Fcap] (fewer where a CV has many links).
    n_links = int(cov.sum(1).max()) if I else 0
    m = max(1, cpu_levels if n_links <= 2 else min(cpu_levels, 2))
    edges = [0.0] + [Fcap * 2.0 ** -(m - 1 - j) for j in range(m)]
    levels = list(zip(edges[:-1], edges[1:]))
    for i in np.flatnonzero(act):
        BE = p.V * (1.0 - p.alpha) / p.E_ref + Y[i] / E2  # weight of a joule of CV i
        loc = (G[i] * inten[i] / C[i], w_loc[i], BE * p.kappa_cv * G[i] * inten[i] * C[i] ** 2
               + q_loc[i] * G[i] * inten[i] / W2, 0.0)
        parts = [[None, loc]]  # per part: its options (None: unused), each (a, c, e, const)
        for k in np.flatnonzero(cov[i]):
            R = p.sensing_gain * p.bandwidth * max(float(se[i, k]), 1e-300)
            opts = []
            for f_lo, f_hi in levels:  # F_ik in [f_lo, f_hi]: delays at f_hi, the F^2 energy at f_lo
                comp, e_f = G[i] * inten[i] / f_hi, BE * p.kappa_rsu * f_lo ** 2
                opts.append((G[i] / R + comp, w_rsu[k], BE * p.tx_power * G[i] / R + e_f * G[i] * inten[i]
                             + q_rsu[k] * G[i] * inten[i] / W2, 0.0))                      # DataT
                opts.append((G[i] * co[i] / f_hi + comp, G_ins[i] / R + w_rsu[k],
                             e_f * G[i] * (inten[i] + co[i]) + q_rsu[k] * G[i] * (inten[i] + co[i]) / W2,
                             BE * p.tx_power * G_ins[i] / R))                                # InstrT
            parts.append([None] + opts)
        best = np.inf
        for combo in itertools.product(*parts):
            used = [o for o in combo if o is not None]
            if not used:
                continue
            a, c, e, k0 = (np.array(v, float) for v in zip(*used))
            best = min(best, _lp_min(A, a, c, e) + float(k0.sum()))
        total += best
    return total


def _slot_args(sim: Any, e: int = 0) -> tuple:
    """One environment's slot from a simulator, as DppOptimizer.solve takes it (paper parameterisation)."""
    from .optimizer import _env_slice, _tasks_slice  # the optimiser's own slicing, so both see one slot
    return (paper_params(sim.params), _env_slice(sim.queues, e), _tasks_slice(sim.tasks, e),
            sim.cv_cpu[e:e + 1], sim.spec_eff[e:e + 1], sim.covered[e:e + 1], sim.mob.active[e:e + 1])


def reference_raw(sim: Any) -> np.ndarray:
    """The local, nearest and equal policies' raw actions (R, E, I, 3K+2), as dpp-opt's act_sim takes them."""
    return np.stack([REFERENCE_POLICIES[n](sim.n_rsus, 0).act(sim.obs) for n in REFERENCES], axis=0)


@dataclass
class SlotGaps:
    """Per slot of one trajectory: the policy's -R(t), dpp-opt's, the thorough mode's and the bound."""

    policy: np.ndarray
    dpp: np.ndarray
    thorough: np.ndarray
    bound: np.ndarray

    @staticmethod
    def rel(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return (a - ref) / np.maximum(np.abs(ref), 1e-12)

    def row(self) -> dict[str, float]:
        """Relative gaps (median, max) to the thorough optimum, and the bound's certified gap."""
        out: dict[str, float] = {"slots": float(self.policy.size)}
        for name, v in (("policy", self.policy), ("dpp", self.dpp)):
            g = self.rel(v, self.thorough)
            out[f"{name}_vs_thorough_median"], out[f"{name}_vs_thorough_mean"] = float(np.median(g)), float(g.mean())
            out[f"{name}_vs_thorough_max"] = float(g.max())
        gb = self.rel(self.thorough, self.bound)
        out["thorough_vs_bound_median"], out["thorough_vs_bound_max"] = float(np.median(gb)), float(gb.max())
        return out


def trajectory_gaps(sim: Any, act: Any, slots: int, seed: int, thorough: ThoroughOptimizer,
                    with_bound: bool = True) -> SlotGaps:
    """Run ``act(sim) -> raw actions`` for ``slots`` slots from ``sim.reset(seed)`` (one environment)
    and, on every slot it meets, solve the same slot with dpp-opt and the thorough mode and bound it.
    The policy's value is the -R(t) the environment gives its action (under the policy's own
    ``actions.*`` options); the others solve the paper's parameterisation, which contains them."""
    sim.reset(seed)
    pol, dpp, tho, lb = [], [], [], []
    for _ in range(slots):
        params, queues, tasks, cv_cpu, spec_eff, covered, active = args = _slot_args(sim)
        raw_t, f_t, f_d = thorough.solve(params, queues, tasks, cv_cpu, spec_eff, covered, active,
                                         ref_raw=reference_raw(sim)[:, 0])
        tho.append(f_t)
        dpp.append(f_d)
        lb.append(slot_lower_bound(*args) if with_bound else -np.inf)
        out = sim.step(act(sim))
        pol.append(-float(out.reward[0]))
        if out.done:
            sim.reset(seed + 1 + len(pol))
    return SlotGaps(*(np.array(v) for v in (pol, dpp, tho, lb)))
