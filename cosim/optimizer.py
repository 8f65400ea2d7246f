"""A per-slot drift-plus-penalty optimiser ("dpp-opt"): the full-information reference.

With everything about the current slot known (tasks, fading, queues, CPUs, coverage),
:class:`DppOptimizer` minimises the per-slot problem P2 (eq. 39), i.e. maximises the slot's system
reward R(t) of docs/model.md section 7 exactly as :func:`cosim.model.slot` computes it, jointly over
every CV's task split, bandwidth shares and RSU CPU requests. The offloading mode is not a decision:
the model picks InstrT/DataT, as the twin does. Each environment of a batch is optimised on its own:
a myopic per-slot optimum (what P2 asks), not a policy that plans across slots.

Parameterisation (:class:`SlotProblem`), chosen so that no share saturates: the split is a softmax
over the local logit and the covered RSUs' logits (parts below ``min_split_share`` dropped as
:func:`cosim.model.project` drops them); the bandwidth a softmax over the RSUs that get a part (a
higher rate never costs anything); the RSU CPU, per RSU, a softmax over the CVs offloading there and
an "idle" logit, F_ik = (F_max - C_twin) * share, so nothing is scaled down (C6; sigmoid requests
stall at a saturated RSU). Only the entries that can matter are optimised (one local logit per
covered CV, three per link, one idle logit per RSU in use), so the dimension grows with the links,
not with I x K; logits stay in [-bound, bound].

Method: multi-start BFGS (dense inverse Hessian on small slots, L-BFGS above, ``method``) with a
line search on a geometric grid of steps (``line_search``), from the 'equal' reference decision, a
load-balanced heuristic and random perturbations of it (more of them only where the first starts
disagree), pruning starts far behind; then a probe round of random directions (its gain is a
convergence certificate), and the result is compared with the reference policies' own actions: the
returned action is never worse on the slot than local, nearest or equal. With numba installed the
objective, its exact gradient (derived by hand, reverse mode) and the BFGS loop run compiled
(:mod:`cosim.fast.objective`); in numpy every objective value is a row of one batched
:func:`cosim.model.slot` call and gradients are forward differences. How the settings were chosen,
with the measurements and their commands: docs/speed.md ("The per-slot optimiser").

Diagnostics: ``last_stats`` holds one dict per environment of the last slot, ``history`` every
slot's; :meth:`DppOptimizer.summary` aggregates them. Options come from
``cfg.training.extra["dpp_opt"]`` (or keyword arguments), see :data:`DEFAULTS`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fast import AVAILABLE as FAST_AVAILABLE
from .fast import step as fast_step
from . import model as M
from .config import CosimError, _f, load_settings, to_dict
from .policies import REFERENCE_POLICIES

LOGIT_FLOOR = -50.0   # the projection clips raw actions to +-50 (model._LOGIT_CLIP)
REFERENCES = ("local", "nearest", "equal")

EXTRA_SECTION = "dpp_opt"  # training.extra key of the settings below
METHODS = ("auto", "lbfgs", "dense")
LINE_SEARCHES = ("first", "grid")
# method auto: the dense inverse Hessian up to this many parameters per iteration allowed (see DppOptConfig;
# L-BFGS's two-loop recursion costs grow with the pairs kept, at most ``iterations``, dense's with d)
AUTO_DENSE_DIM_PER_ITERATION = 0.625


@dataclass(frozen=True)
class DppOptConfig:
    """The per-slot optimiser's settings: ``training.extra.dpp_opt`` (or keyword arguments), typed and
    range-checked like the config (cosim.config.load_settings)."""

    random_starts: int = _f(4, 0, 1000, doc="perturbed heuristic starts (besides 'equal' and the heuristic), at most")
    first_random_starts: int = _f(1, 0, 1000, doc="random starts run with the others; the rest of the "
                                                  "random_starts run only where the two best starts so far "
                                                  "differ by more than ...")
    more_starts_gap: float = _f(1e-3, 0.0, 1e6, doc="... this (relative); 0: every random start runs at once")
    warm_start: bool = _f(False, doc="also start from the previous slot's solution of the same environment "
                                     "(within an episode; measured: no lower cost, see the module docstring)")
    sigma: float = _f(1.0, 0.0, 100.0, doc="std of the perturbation, logit units")
    reference_starts: tuple[str, ...] = _f(("equal",), choices=REFERENCES,
                                           doc="reference decisions used as starts (all are final candidates)")
    method: str = _f("auto", choices=METHODS,
                     doc="lbfgs: limited-memory BFGS, the inverse Hessian applied to the gradient by the "
                         "two-loop recursion (O(pairs d) per iteration); with memory 0 the same iterates as "
                         "dense, within rounding. dense: the d x d inverse Hessian (O(d^2) per iteration), the "
                         "reference. auto: dense for slots of at most 0.625 x iterations parameters (50 at "
                         "80 iterations) when memory is 0, lbfgs otherwise. Measured (80 iterations): dense is "
                         "faster below about 55 parameters (1.4 vs 1.8 ms per slot on the default 5-CV road), "
                         "lbfgs above (3x at 40 CVs, 8-10x at 50 CVs x 10 RSUs and 200 x 20); at 300 "
                         "iterations the two cross between 110 and 230 parameters")
    memory: int = _f(0, 0, 100_000, doc="L-BFGS: the last this many steps and gradient changes are kept; 0: "
                                        "every one since the last reset (at most iterations). Measured at "
                                        "<= 50 CVs: 20 leaves the objective 0.5-1% above dense's, 40 0.1-0.9%")
    iterations: int = _f(80, 0, 100_000, doc="BFGS iterations at most")
    line_steps: int = _f(12, 1, 60, doc="step sizes tried per iteration: line_max * 2^-j, j = 0..line_steps-1")
    line_max: float = _f(1.0, 1e-6, 1e3, doc="longest step, in units of the BFGS step")
    max_step: float = _f(8.0, 1e-6, 1e3, doc="longest BFGS step, logit units")
    fd_step: float = _f(1e-6, 1e-12, 1.0, doc="finite-difference step, logit units (the numpy path's gradients)")
    bound: float = _f(8.0, 1e-3, -LOGIT_FLOOR, doc="logits live in [-bound, bound]")
    tol: float = _f(1e-10, 0.0, 1.0, doc="relative decrease that counts as progress")
    prune_after: int = _f(30, 0, 100_000, doc="from this iteration on, drop starts ...")
    prune_gap: float = _f(0.02, 0.0, 1e6, doc="... whose objective is this much (relative) behind the best")
    probe_dirs: int = _f(32, 0, 100_000, doc="final probe round: directions (each tried + and -, at 3 scales)")
    heuristic_start: bool = _f(True, doc="start from the load-balanced heuristic too (RefinedPolicy: off)")
    history: int = _f(100_000, 1, 100_000_000, doc="slots of diagnostics kept for summary() (oldest dropped first)")
    line_search: str = _f("first", choices=LINE_SEARCHES,
                          doc="which step of the grid (longest first) is taken: first: the first that improves; "
                              "grid: the best")
    fused: bool = _f(True, doc="numba objective, its exact gradient and the BFGS loop (cosim/fast/objective.py) "
                               "when numba is installed; numpy: forward-difference gradients")

    @classmethod
    def from_config(cls, cfg: Any) -> DppOptConfig:
        return load_settings(cls, cfg.training.extra.get(EXTRA_SECTION), f"training.extra.{EXTRA_SECTION}")


DEFAULTS: dict[str, Any] = to_dict(DppOptConfig())


# ---------------------------------------------------------------------------
# Decisions <-> raw actions

def raw_from_decision(p: M.ModelParams, split: np.ndarray, bandwidth: np.ndarray,
                      cpu_request: np.ndarray) -> np.ndarray:
    """Raw actions (..., 3K+2) whose :func:`cosim.model.project` gives back the decision.

    Split logits are log(shares) floored at -50 (zero shares then fall below
    ``min_split_share`` and are dropped again); bandwidth logits are log(b_k) with
    log(1 - sum_k b_k) as the last, "unused" logit; CPU logits are logit(w) clipped
    to +-50. The decision must be feasible and in the projection's image (split on
    the simplex with every kept part >= ``min_split_share`` and dropped parts
    exactly 0, sum_k b_k <= 1, w in [0, 1], no part on an uncovered RSU). With
    ``min_split_share = 0`` a zero part comes back as a share of about 1e-22 (the
    projection cannot produce an exact 0 then).
    """
    split = np.asarray(split, dtype=float)
    bandwidth = np.asarray(bandwidth, dtype=float)
    w = np.clip(np.asarray(cpu_request, dtype=float), 0.0, 1.0)
    K = bandwidth.shape[-1]
    if split.shape[-1] != K + 1 or w.shape[-1] != K:
        raise ValueError(f"shapes do not match K = {K}: split {split.shape}, cpu_request {w.shape}")
    with np.errstate(divide="ignore"):
        s_logit = np.maximum(np.log(np.clip(split, 0.0, None)), LOGIT_FLOOR)
        b = np.clip(bandwidth, 0.0, None)
        unused = np.clip(1.0 - b.sum(axis=-1, keepdims=True), 0.0, None)
        b_logit = np.maximum(np.log(np.concatenate([b, unused], axis=-1)), LOGIT_FLOOR)
        w_logit = np.clip(np.log(w) - np.log1p(-w), LOGIT_FLOOR, -LOGIT_FLOOR)
    return M.ActionLayout(K).assemble(s_logit, b_logit, w_logit)


# ---------------------------------------------------------------------------
# One environment's slot as a batched objective

class SlotProblem:
    """The per-slot problem of one environment: candidate parameters in, -R(t) out.

    Parameters theta have shape (N, I+1, 3K+1) per candidate. Rows 0..I-1 are the
    CVs: split logits (K+1: local, RSUs), bandwidth logits (K), CPU logits (K).
    Row I holds the RSUs' idle CPU logits in its last K columns. Only the entries
    in ``free`` are optimised: the flat vector x of length ``d``.
    """

    def __init__(self, p: M.ModelParams, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
                 spec_eff: np.ndarray, covered: np.ndarray, active: np.ndarray, bound: float = 8.0):
        """Every array for ONE environment, with a leading axis of length 1."""
        self.p = p
        self.K = K = p.n_rsus
        self.I = I = int(np.shape(cv_cpu)[-1])
        self.bound = float(bound)
        self.state, self.tasks = state, tasks
        self.cv_cpu, self.spec_eff = cv_cpu, spec_eff
        self.active = np.asarray(active, dtype=bool).reshape(I)
        self.covered = np.asarray(covered, dtype=bool).reshape(I, K) & self.active[:, None]
        self.split_mask = np.concatenate([np.ones((I, 1), bool), self.covered], axis=1)  # (I, K+1)
        ncov = self.covered.sum(axis=1)
        self.lay = lay = M.ActionLayout(K, unused_bandwidth=False)
        free = np.zeros((I + 1, lay.dim), bool)
        free[:I, lay.local] = ncov > 0                                      # local logit
        free[:I, lay.split_rsu] = self.covered                              # RSU split logits
        free[:I, lay.bandwidth] = self.covered & (ncov[:, None] > 1)        # bandwidth (one RSU: b = 1)
        free[:I, lay.cpu] = self.covered                                    # CPU logits
        free[I, lay.cpu] = self.covered.any(axis=0)                         # idle CPU logits
        self.free = free
        self.d = int(free.sum())
        base = np.zeros((I + 1, lay.dim))
        base[:I, lay.split_rsu] = np.where(self.covered, 0.0, -self.bound)
        self.base = base
        self.n_evals = 0
        self.n_grads = 0  # analytic gradients (fused path), not counted in n_evals
        self.n_calls = 0
        self._tiled: dict[str, Any] = {}
        self._cap = 0
        self.fused: Any = None  # cosim.fast.objective.SlotObjective, set by use_fused()

    def use_fused(self) -> SlotProblem:
        """Evaluate with cosim/fast/objective.py's kernels (the same numbers within rounding)."""
        from .fast.objective import SlotObjective
        self.fused = SlotObjective(self)
        return self

    # -- parameter maps ---------------------------------------------------------------------
    def theta(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        th = np.broadcast_to(self.base, x.shape[:-1] + self.base.shape).copy()
        th[..., self.free] = x
        return th

    def x_of(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta)[..., self.free]

    def decode(self, theta: np.ndarray) -> M.Decision:
        """theta (N, I+1, 3K+1) -> feasible decisions (N, I, ...) in the projection's image."""
        p, K, I, lay = self.p, self.K, self.I, self.lay
        t = theta[..., :I, :]
        split = M.drop_small_parts(M.masked_softmax(t[..., lay.split], self.split_mask), p.min_split_share)
        used = split[..., 1:] > 0
        bw = M.masked_softmax(t[..., lay.bandwidth], used)
        cpu_mask = np.concatenate([used, np.ones(used.shape[:-2] + (1, K), bool)], axis=-2)
        w = M.masked_softmax(theta[..., lay.cpu], cpu_mask, axis=-2)[..., :I, :]
        return M.make_decision(p, split, bw, w)

    def decision(self, x: np.ndarray) -> M.Decision:
        """The decision (leading axis 1) at one parameter vector x (d,): decode(theta(x)), fused when in use."""
        if self.fused is not None:
            return self.fused.decision(x)
        return self.decode(self.theta(np.asarray(x, dtype=float)[None]))

    def encode(self, dec: M.Decision, index: int = 0, idle_floor: float = -2.0) -> np.ndarray:
        """Row ``index`` of a decision -> x (clipped to the bounds). The idle CPU logit is
        kept >= ``idle_floor`` so that the start is not saturated at full capacity."""
        I, B, lay = self.I, self.bound, self.lay
        split, bw = dec.split[index], dec.bandwidth[index]
        f = dec.cpu[index] / self.p.rsu_capacity
        idle = np.clip(1.0 - f.sum(axis=0), 0.0, None)
        lg = lambda a: np.log(np.maximum(a, 1e-300))  # noqa: E731
        th = np.zeros((I + 1, lay.dim))
        th[:I] = lay.assemble(lg(split), lg(bw), np.where(split[:, 1:] > 0, lg(f), 0.0))
        th[I, lay.cpu] = np.maximum(lg(idle), idle_floor)
        return np.clip(self.x_of(th), -B, B)

    def heuristic(self) -> np.ndarray:
        """Everything offloaded, evenly over the covered RSUs, equal bandwidth; each RSU's
        CPU shared evenly by the CVs it covers and an idle share. All-local without RSU."""
        I, B, lay = self.I, self.bound, self.lay
        th = self.base.copy()
        th[:I, lay.local] = -B
        th[:I, lay.bandwidth.start:] = 0.0
        th[I, lay.cpu] = 0.0
        return self.x_of(th)

    # -- evaluation -------------------------------------------------------------------------
    def _inputs(self, n: int):
        if n > self._cap:
            cap = max(n, 2 * self._cap, 64)
            st = self.state
            rep = lambda a: np.repeat(np.asarray(a), cap, axis=0)  # noqa: E731
            self._tiled = {
                "state": [rep(a) for a in (st.q_loc, st.q_rsu, st.energy, st.hist_q_loc, st.hist_lam_loc,
                                           st.hist_q_rsu, st.hist_lam_rsu)],
                "tasks": [rep(getattr(self.tasks, f)) for f in
                          ("size", "instr", "intensity", "co_intensity", "deadline")],
                "rest": [rep(self.cv_cpu), rep(self.spec_eff), np.repeat(self.active[None], cap, axis=0)]}
            self._cap = cap
        t = self._tiled
        state = M.QueueState(*(a[:n] for a in t["state"]), self.state.t)
        tasks = M.Tasks(*(a[:n] for a in t["tasks"]))
        cpu, se, act = (a[:n] for a in t["rest"])
        return state, tasks, cpu, se, act

    def evaluate_decision(self, dec: M.Decision) -> np.ndarray:
        """Objective -R(t) of N decisions (N, I, ...) -> (N,)."""
        n = dec.split.shape[0]
        self.n_evals += n
        self.n_calls += 1
        if self.fused is not None:
            obj = -self.fused.rewards(dec)
        else:
            state, tasks, cpu, se, act = self._inputs(n)
            res, _ = M.slot(self.p, state, tasks, cpu, se, dec, act)
            obj = -res.reward
        return np.where(np.isfinite(obj), obj, np.inf)  # a NaN can never win

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Objective of parameter vectors x (N, d) -> (N,)."""
        x = np.asarray(x, dtype=float)
        x = x.reshape((1 if x.ndim < 2 else x.shape[0]), self.d)
        if self.fused is not None:
            self.n_evals += x.shape[0]
            self.n_calls += 1
            return self.fused(x)
        return self.evaluate_decision(self.decode(self.theta(x)))


# ---------------------------------------------------------------------------
# Vectorised multi-start BFGS

def _gradient(prob: SlotProblem, x: np.ndarray, f: np.ndarray, h: float) -> np.ndarray:
    """The objective's gradient at S points: the compiled objective's exact one when in use, else forward
    differences in one call (backward where +h would leave the box)."""
    S, d = x.shape
    if prob.fused is not None:
        prob.n_grads += S
        return np.stack([prob.fused.value_grad(xs)[1] for xs in x]) if S else np.zeros((0, d))
    step = np.where(x + h > prob.bound, -h, h)  # (S, d)
    probes = x[:, None, :] + np.eye(d)[None] * step[:, None, :]
    fp = prob(probes.reshape(-1, d)).reshape(S, d)
    return (fp - f[:, None]) / step


def _line_pick(fc: np.ndarray, f: np.ndarray, tol: float, rule: str) -> np.ndarray:
    """The step each start takes from its grid values fc (S, steps; longest step first) and current values f:
    grid: the best; first: the first that improves (by tol, relative), else the best. (The numba loop
    evaluates only up to that step.)"""
    if rule == "grid":
        return fc.argmin(axis=1)
    improves = fc < (f - tol * np.abs(f))[:, None]
    return np.where(improves.any(axis=1), improves.argmax(axis=1), fc.argmin(axis=1))


class _LbfgsMemory:
    """L-BFGS pairs of S starts: a ring of each one's last m steps s and gradient changes y, with rho = 1 / s'y."""

    def __init__(self, S: int, d: int, m: int):
        self.m = m
        self.s, self.y, self.rho = np.zeros((S, m, d)), np.zeros((S, m, d)), np.zeros((S, m))
        self.n, self.head = np.zeros(S, int), np.zeros(S, int)  # pairs held, next slot

    def push(self, rows: np.ndarray, s: np.ndarray, y: np.ndarray, sy: np.ndarray) -> None:
        c = self.head[rows]
        self.s[rows, c], self.y[rows, c], self.rho[rows, c] = s, y, 1.0 / sy
        self.head[rows] = (c + 1) % self.m
        self.n[rows] = np.minimum(self.n[rows] + 1, self.m)

    def direction(self, rows: np.ndarray, g: np.ndarray) -> np.ndarray:
        """-H g of the given starts: the two-loop recursion over their pairs on the identity."""
        q = g.copy()
        n = self.n[rows]
        jmax = int(n.max()) if n.size else 0
        al = np.zeros((len(rows), jmax))
        dot = lambda a, b: np.einsum("sd,sd->s", a, b)  # noqa: E731
        for j in range(jmax):  # newest first
            c, v = (self.head[rows] - 1 - j) % self.m, j < n
            al[:, j] = np.where(v, self.rho[rows, c] * dot(self.s[rows, c], q), 0.0)
            q -= al[:, j, None] * self.y[rows, c]
        for j in range(jmax - 1, -1, -1):  # oldest first
            c, v = (self.head[rows] - 1 - j) % self.m, j < n
            beta = self.rho[rows, c] * dot(self.y[rows, c], q)
            q += np.where(v, al[:, j] - beta, 0.0)[:, None] * self.s[rows, c]
        return -q


def resolve_method(opt: dict[str, Any], d: int) -> str:
    """The BFGS variant for a slot of d parameters: 'lbfgs' or 'dense' (``method: auto`` picks by size)."""
    if opt["method"] != "auto":
        return opt["method"]
    small = d <= AUTO_DENSE_DIM_PER_ITERATION * int(opt["iterations"])
    return "dense" if small and not int(opt["memory"]) else "lbfgs"


def bfgs_multistart(prob: SlotProblem, x0: np.ndarray, opt: dict[str, Any],
                    compiled: bool = True) -> dict[str, np.ndarray]:
    """Minimise from every start (S, d) at once. Returns final x, f, and per-start status.

    On a fused problem the loop runs compiled (cosim/fast/objective.py) unless ``compiled`` is False:
    then this numpy loop, the compiled one's reference, runs on the fused objective and its gradient."""
    opt = dict(opt, method=resolve_method(opt, prob.d))
    if prob.fused is not None and compiled:  # the same loop in numba
        x, f, f0, code, last_gain, iters, n_evals, n_grads = prob.fused.bfgs(np.asarray(x0, dtype=float), opt)
        prob.n_evals += int(n_evals)
        prob.n_grads += int(n_grads)
        prob.n_calls += 1
        status = np.array(["iteration", "converged", "pruned"])[code]
        return {"x": x, "f": f, "f0": f0, "status": status, "last_gain": last_gain, "iterations": iters}
    B, h, tol = prob.bound, float(opt["fd_step"]), float(opt["tol"])
    x = np.clip(np.array(x0, dtype=float), -B, B)
    S, d = x.shape
    f = prob(x)
    f0 = f.copy()
    status = np.zeros(S, dtype="<U9")
    status[:] = "iteration"  # how the start ended: converged | pruned | iteration (cap hit)
    last_gain = np.full(S, np.nan)
    iters = np.zeros(S, int)
    if d == 0:
        status[:] = "converged"
        return {"x": x, "f": f, "f0": f0, "status": status, "last_gain": np.zeros(S), "iterations": iters}
    g = _gradient(prob, x, f, h)
    lbfgs = opt["method"] == "lbfgs"
    if lbfgs:  # a ring of each start's last m steps and gradient changes
        mem = _LbfgsMemory(S, d, int(opt["memory"]) or max(int(opt["iterations"]), 1))
    else:
        eye = np.eye(d)
        H = np.repeat(eye[None], S, axis=0)
    fresh = np.ones(S, bool)
    alive = np.ones(S, bool)
    alphas = float(opt["line_max"]) * 2.0 ** -np.arange(int(opt["line_steps"]))
    max_step = float(opt["max_step"])
    for it in range(int(opt["iterations"])):
        if it >= int(opt["prune_after"]):
            fb = f.min()
            prune = alive & (f > fb + float(opt["prune_gap"]) * abs(fb))
            status[prune] = "pruned"
            alive &= ~prune
        ia = np.flatnonzero(alive)
        if ia.size == 0:
            break
        iters[ia] += 1
        pdir = mem.direction(ia, g[ia]) if lbfgs else -np.einsum("sij,sj->si", H[ia], g[ia])
        norm = np.linalg.norm(pdir, axis=1, keepdims=True)
        pdir *= np.minimum(1.0, max_step / np.maximum(norm, 1e-300))
        cand = np.clip(x[ia, None, :] + alphas[None, :, None] * pdir[:, None, :], -B, B)
        fc = prob(cand.reshape(-1, d)).reshape(ia.size, -1)  # every step at once; the rule picks one
        j = _line_pick(fc, f[ia], tol, opt["line_search"])
        fnew = fc[np.arange(ia.size), j]
        ok = fnew < f[ia] - tol * np.abs(f[ia])
        bad = ia[~ok]
        done = bad[fresh[bad]]
        status[done] = "converged"
        alive[done] = False
        if lbfgs:
            mem.n[bad] = 0
        else:
            H[bad] = eye
        fresh[bad] = True
        io = ia[ok]
        if io.size == 0:
            continue
        xn = cand[ok, j[ok]]
        fn = fnew[ok]
        gn = _gradient(prob, xn, fn, h)
        s, y = xn - x[io], gn - g[io]
        sy = np.einsum("si,si->s", s, y)
        upd = sy > 1e-12 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
        if lbfgs:
            mem.push(io[upd], s[upd], y[upd], sy[upd])
        else:
            Hs = H[io]
            Hy = np.einsum("sij,sj->si", Hs, y)
            rho = np.where(upd, 1.0 / np.where(upd, sy, 1.0), 0.0)
            yHy = np.einsum("si,si->s", y, Hy)
            Hn = (Hs - rho[:, None, None] * (s[:, :, None] * Hy[:, None, :] + Hy[:, :, None] * s[:, None, :])
                  + (rho ** 2 * yHy + rho)[:, None, None] * s[:, :, None] * s[:, None, :])
            H[io] = np.where(upd[:, None, None], Hn, Hs)
        fresh[io] &= ~upd
        last_gain[io] = (f[io] - fn) / np.maximum(np.abs(f[io]), 1e-12)
        x[io], f[io], g[io] = xn, fn, gn
    return {"x": x, "f": f, "f0": f0, "status": status, "last_gain": last_gain, "iterations": iters}


def _probe(prob: SlotProblem, x: np.ndarray, f: float, n_dirs: int,
           rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """One round of random unit directions, each tried + and - at a step of 1e-1, 1e-2 or
    1e-3 logit units, around x. Returns the better point, its value and the relative gain
    found (0: nothing better nearby)."""
    d = x.shape[0]
    if d == 0 or n_dirs <= 0:
        return x, f, 0.0
    u = rng.standard_normal((n_dirs, d))
    if prob.fused is not None:  # the same candidates, compiled
        prob.n_evals += 2 * n_dirs
        prob.n_calls += 1
        xc, fc = prob.fused.probe(x, u, prob.bound)
        return (xc, fc, (f - fc) / max(abs(f), 1e-12)) if fc < f else (x, f, 0.0)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    scale = np.array([1e-1, 1e-2, 1e-3])[np.arange(n_dirs) % 3][:, None]
    cand = np.clip(np.concatenate([x + scale * u, x - scale * u]), -prob.bound, prob.bound)
    fc = prob(cand)
    j = int(fc.argmin())
    if fc[j] < f:
        return cand[j], float(fc[j]), (f - float(fc[j])) / max(abs(f), 1e-12)
    return x, f, 0.0


# ---------------------------------------------------------------------------
# The policy

class DppOptimizer:
    """Per-slot drift-plus-penalty optimiser with full information of the slot.

    ``act_sim(sim)`` returns raw actions (E, I, 3K+2) for the simulator's current
    slot. ``last_stats``: one diagnostics dict per environment of the last slot;
    ``history``: every slot's (the last ``history`` option's worth); :meth:`summary`
    aggregates them and :meth:`summary_text` says it in one line.

    Per-slot diagnostics (relative quantities are relative to |objective|):
    ``objective`` (-R(t) of the returned action), ``start_gap`` (second-best start
    vs the best), ``starts_agree`` (starts within 1e-4 of the best), ``converged``
    (the best start stopped by a failed line search, not by the iteration cap),
    ``last_gain`` (its last accepted BFGS step), ``probe_gain`` (what the final
    random probe round still found), ``gain_over_references``, ``fallback`` (a
    reference policy's action was better, should be None), ``n_evals``, ``seconds``.
    """

    name = "dpp-opt"
    SETTINGS_SECTION = EXTRA_SECTION  # run_cosim saves self.settings there in the run's config.yaml

    def __init__(self, env: Any = None, seed: int | None = None, **options: Any):
        cfg = getattr(env, "cfg", None)
        base = DppOptConfig.from_config(cfg) if cfg is not None else DppOptConfig()
        self.settings: DppOptConfig = (load_settings(DppOptConfig, {**to_dict(base), **options}, "dpp-opt option")
                                       if options else base)
        self.options = to_dict(self.settings)  # the solver's plain view of the settings
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._refs: list[Any] | None = None
        self._warm: dict[int, np.ndarray] = {}  # env -> the previous slot's solution (parameters theta)
        self.last_stats: list[dict[str, Any]] = []
        self.history: deque[dict[str, Any]] = deque(maxlen=int(self.options["history"]))

    # -- policy interface -------------------------------------------------------------------
    def reset(self) -> None:
        """Called by the runner at the start of every episode chunk (diagnostics are kept, warm starts dropped)."""
        self._warm.clear()

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        raise CosimError("dpp-opt needs the whole simulator: call act_sim(sim) (the runner does)")

    def _references(self, K: int) -> list[Any]:
        if self._refs is None or self._refs[0].K != K:
            self._refs = [REFERENCE_POLICIES[n](K, 0) for n in REFERENCES]
        return self._refs

    def act_sim(self, sim: Any) -> np.ndarray:
        """Raw actions (E, I, 3K+2) that maximise each environment's R(t) this slot."""
        if not sim.params.paper_actions:  # its raw actions are in the paper's projection's image only
            raise CosimError("dpp-opt optimises the paper's action parameterisation (it bounds every actions.* "
                             "option from below): evaluate it with actions.bandwidth/split/cpu = paper")
        ref_raw = np.stack([r.act(sim.obs) for r in self._references(sim.n_rsus)], axis=0)  # (R, E, I, 3K+2)
        if sim.t == 0:  # a new episode: the last one's solutions say nothing about it
            self._warm.clear()
        return self.solve_sim(sim, ref_raw=ref_raw)

    def solve_sim(self, sim: Any, ref_raw: np.ndarray | None = None,
                  start_raw: np.ndarray | None = None) -> np.ndarray:
        """:meth:`solve` for every environment of the simulator's current slot, recording the stats.
        ``ref_raw`` (R, E, I, 3K+2) and ``start_raw`` (E, I, 3K+2): per environment, as in solve."""
        out = np.zeros((sim.n_envs, sim.n_cvs, M.action_dim(sim.n_rsus)))
        self.last_stats = []
        for e in range(sim.n_envs):
            out[e], stats = self.solve(sim.params, _env_slice(sim.queues, e), _tasks_slice(sim.tasks, e),
                                       sim.cv_cpu[e:e + 1], sim.spec_eff[e:e + 1], sim.covered[e:e + 1],
                                       sim.mob.active[e:e + 1], None if ref_raw is None else ref_raw[:, e], env=e,
                                       start_raw=None if start_raw is None else start_raw[e])
            stats.update(env=e, t=int(sim.t))
            self.last_stats.append(stats)
        self.history.extend(self.last_stats)
        return out

    # -- one environment --------------------------------------------------------------------
    def solve(self, p: M.ModelParams, state: M.QueueState, tasks: M.Tasks, cv_cpu: np.ndarray,
              spec_eff: np.ndarray, covered: np.ndarray, active: np.ndarray,
              ref_raw: np.ndarray | None = None, env: int | None = None,
              start_raw: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Optimise one environment's slot (arrays with a leading axis of 1).

        ``ref_raw`` (3, I, 3K+2): raw actions of the local, nearest and equal policies
        (starts, and a floor on the result). ``env``: with ``warm_start``, the previous solution
        kept under this key is one more start, and this slot's solution replaces it. ``start_raw``
        (I, 3K+2): another policy's raw action, one more start (RefinedPolicy).
        Returns raw actions (I, 3K+2) and diagnostics.
        """
        t0 = time.perf_counter()
        opt = self.options
        prob = SlotProblem(p, state, tasks, cv_cpu, spec_eff, covered, active, bound=float(opt["bound"]))
        fused = bool(opt["fused"]) and FAST_AVAILABLE
        if fused:
            prob.use_fused()
        I, K, d = prob.I, prob.K, prob.d
        cov1, act1 = np.asarray(covered, bool).reshape(1, I, K), np.asarray(active, bool).reshape(1, I)

        def project(raw: np.ndarray) -> M.Decision:
            n = raw.shape[0]
            cov, act = np.broadcast_to(cov1, (n, I, K)), np.broadcast_to(act1, (n, I))
            return fast_step.project(p, prob.fused.params, raw, cov, act) if fused else M.project(p, raw, cov, act)

        # Starts.
        starts, names = [], []
        if ref_raw is not None:
            ref_dec = project(ref_raw)
            f_ref = prob.evaluate_decision(ref_dec)  # the floor on the result
            for name in opt["reference_starts"]:
                starts.append(prob.encode(ref_dec, REFERENCES.index(name)))
                names.append(name)
        warm = self._warm.get(env) if (env is not None and opt["warm_start"]) else None
        if warm is not None and warm.shape == prob.base.shape:  # free entries may differ: coverage changed
            starts.append(np.clip(prob.x_of(warm), -prob.bound, prob.bound))
            names.append("warm")
        if start_raw is not None:
            starts.append(prob.encode(project(np.asarray(start_raw)[None])))
            names.append("policy")
        x_h = prob.heuristic()
        if opt["heuristic_start"] or not starts:
            starts.append(x_h)
            names.append("balanced")
        th_h = prob.theta(x_h)

        def add_random_starts(j0: int, j1: int) -> None:
            for j in range(j0, j1):
                th = th_h + float(opt["sigma"]) * self.rng.standard_normal(th_h.shape)
                th[:I, 0] = self.rng.uniform(-6.0, -2.0, I)  # a little local work, or none
                starts.append(np.clip(prob.x_of(th), -prob.bound, prob.bound))
                names.append(f"random{j}")

        n_rand = int(opt["random_starts"])
        n_first = n_rand if opt["more_starts_gap"] <= 0 else min(n_rand, int(opt["first_random_starts"]))
        add_random_starts(0, n_first)
        run = bfgs_multistart(prob, np.array(starts).reshape(len(starts), d), opt)
        if n_rand > n_first and len(starts) > 1:  # the rest of the random starts where the first ones disagree
            f1, f2 = np.sort(run["f"])[:2]
            if f2 - f1 > float(opt["more_starts_gap"]) * max(abs(f1), 1e-12):
                n0 = len(starts)
                add_random_starts(n_first, n_rand)
                more = bfgs_multistart(prob, np.array(starts[n0:]).reshape(len(starts) - n0, d), opt)
                run = {k: np.concatenate([run[k], more[k]]) for k in run}

        order = np.argsort(run["f"], kind="stable")
        b = int(order[0])
        f_start = float(run["f0"][names.index("policy")]) if "policy" in names else float("nan")
        x_b, f_b, probe_gain = _probe(prob, run["x"][b], float(run["f"][b]), int(opt["probe_dirs"]), self.rng)
        if env is not None and opt["warm_start"]:
            self._warm[env] = prob.theta(x_b)

        # Raw actions, projected as the environment will, against the references' own raws.
        dec = prob.decision(x_b)
        raw = raw_from_decision(p, dec.split, dec.bandwidth, dec.cpu_request)
        fc = prob.evaluate_decision(project(raw))
        if ref_raw is not None:
            fc = np.concatenate([fc, f_ref])
        pick = int(np.argmin(fc))  # ties keep the optimiser's own decision (row 0)

        f_all = run["f"]
        f2 = float(f_all[order[1]]) if len(order) > 1 else float("nan")
        rel = lambda a, c: (c - a) / max(abs(a), 1e-12)  # noqa: E731
        best_ref = float(fc[1:].min()) if ref_raw is not None else float("nan")
        stats = {
            "objective": float(fc[pick]),             # -R(t) of the returned action
            "reward": -float(fc[pick]),
            "optimised": f_b,                         # the optimiser's value before the raw round trip
            "roundtrip_error": float(abs(fc[0] - f_b)),
            "best_start": names[b],
            "warm_started": "warm" in names,
            "fallback": None if pick == 0 else REFERENCES[pick - 1],
            "second_best": f2,
            "start_gap": rel(float(f_all[b]), f2),   # relative gap between the two best starts
            "starts_agree": int(np.sum(f_all <= f_all[b] + 1e-4 * abs(f_all[b]))),  # within 1e-4
            "n_starts": len(starts),
            "converged": bool(run["status"][b] == "converged"),
            "status": run["status"].tolist(),
            "last_gain": float(run["last_gain"][b]) if np.isfinite(run["last_gain"][b]) else 0.0,
            "probe_gain": float(probe_gain),
            "iterations": int(run["iterations"][b]),
            "start_improvement": rel(f_b, float(run["f0"][b])),
            "policy_start": f_start,                  # RefinedPolicy: the proposal's objective before refining
            "best_reference": best_ref,
            "gain_over_references": rel(float(fc[pick]), best_ref) if ref_raw is not None else float("nan"),
            "n_evals": prob.n_evals, "n_grads": prob.n_grads, "n_calls": prob.n_calls, "dim": d,
            "method": resolve_method(opt, d),
            "seconds": time.perf_counter() - t0,
        }
        return (ref_raw[pick - 1] if pick else raw[0]), stats

    # -- diagnostics ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Aggregate diagnostics over every slot solved so far (relative quantities)."""
        h = self.history
        if not h:
            return {"slots": 0}
        col = lambda k: np.array([s[k] for s in h], dtype=float)  # noqa: E731
        gap = col("start_gap")
        gap = gap[np.isfinite(gap)]
        q = lambda a, v: float(np.quantile(a, v)) if a.size else float("nan")  # noqa: E731
        return {
            "slots": len(h),
            "median_start_gap": q(gap, 0.5),
            "p90_start_gap": q(gap, 0.9),
            "max_start_gap": q(gap, 1.0),
            "share_two_starts_agree": float(np.mean(col("starts_agree") >= 2)),
            "share_converged": float(np.mean(col("converged"))),
            "median_last_gain": q(col("last_gain"), 0.5),
            "max_last_gain": q(col("last_gain"), 1.0),
            "share_probe_improved": float(np.mean(col("probe_gain") > 0)),
            "max_probe_gain": q(col("probe_gain"), 1.0),
            "mean_gain_over_references": _nanmean(col("gain_over_references")),
            "fallbacks": int(sum(s["fallback"] is not None for s in h)),
            # of the slots with a warm start (all but each episode's first), how often it was the best start
            "share_warm_best": (float(np.mean([s["best_start"] == "warm" for s in h if s.get("warm_started")]))
                                if any(s.get("warm_started") for s in h) else float("nan")),
            "max_roundtrip_error": q(col("roundtrip_error"), 1.0),
            "mean_iterations": float(np.mean(col("iterations"))),
            "mean_evals": float(np.mean(col("n_evals"))),
            "mean_gradients": float(np.mean([s.get("n_grads", 0) for s in h])),  # analytic, besides the evaluations
            "mean_starts": float(np.mean(col("n_starts"))),
            "mean_seconds": float(np.mean(col("seconds"))),
            "total_seconds": float(np.sum(col("seconds"))),
        }

    def summary_text(self) -> str:
        s = self.summary()
        if not s["slots"]:
            return "dpp-opt: no slot solved yet"
        return (f"dpp-opt over {s['slots']} slots: median relative gap between the two best starts "
                f"{s['median_start_gap']:.2%} (p90 {s['p90_start_gap']:.2%}), "
                f"{s['share_two_starts_agree']:.0%} of slots with two starts within 0.01%, "
                f"best start converged in {s['share_converged']:.0%}, "
                f"final probe improved {s['share_probe_improved']:.0%} of slots (max {s['max_probe_gain']:.1e}), "
                f"{s['mean_gain_over_references']:.1%} better than the best reference policy on average, "
                f"{s['mean_starts']:.1f} starts, {s['mean_evals']:.0f} evaluations, "
                f"{s['mean_gradients']:.0f} gradients and {s['mean_seconds'] * 1e3:.1f} ms per slot")


class RefinedPolicy:
    """A policy proposes, the twin refines: the policy's action is the start of a few iterations of
    the slot objective's exact-gradient (L-)BFGS, and nothing else dpp-opt does (no heuristic or
    random starts, no reference floor, no probe round), so that what is learned and what is optimised
    stay apart. Only improving steps are taken from the proposal as the optimiser encodes it (its logits
    within +-``bound``, the idle CPU share at least e^-2 of an RSU), so the result is never worse than
    that start; ``policy_start`` in the stats is its objective. ``last_stats`` and ``summary()`` are
    dpp-opt's. Needs the paper's action parameterisation, like dpp-opt."""

    def __init__(self, policy: Any, env: Any = None, iterations: int = 10, seed: int | None = None):
        self.policy = policy
        self.name = f"refined{iterations}:{getattr(policy, 'name', 'policy')}"
        self.optimizer = DppOptimizer(env, seed=seed, iterations=iterations, random_starts=0, reference_starts=(),
                                      probe_dirs=0, heuristic_start=False)
        self.settings = self.optimizer.settings
        self.SETTINGS_SECTION = EXTRA_SECTION

    def reset(self) -> None:
        if hasattr(self.policy, "reset"):
            self.policy.reset()
        self.optimizer.reset()

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        raise CosimError("a refined policy needs the whole slot: run it through act_sim(sim)")

    def act_sim(self, sim: Any) -> np.ndarray:
        if not sim.params.paper_actions:
            raise CosimError("refining optimises the paper's action parameterisation: run the policy with "
                             "actions.bandwidth/split/cpu = paper")
        proposal = np.asarray(self.policy.act(sim.obs, deterministic=True))
        return self.optimizer.solve_sim(sim, start_raw=proposal).astype(proposal.dtype)  # as the policy's own

    def summary(self) -> dict[str, Any]:
        """dpp-opt's summary, with the mean relative gain of the refined action over the proposal."""
        s = self.optimizer.summary()
        h = self.optimizer.history
        if h:
            start = np.array([x["policy_start"] for x in h], dtype=float)
            end = np.array([x["objective"] for x in h], dtype=float)
            s["mean_gain_over_proposal"] = _nanmean((start - end) / np.maximum(np.abs(start), 1e-12))
        return s

    def summary_text(self) -> str:
        s = self.summary()
        if not s["slots"]:
            return f"{self.name}: no slot refined yet"
        return (f"{self.name} over {s['slots']} slots: {s['mean_gain_over_proposal']:.1%} better on the slot than "
                f"the proposal on average, {s['mean_iterations']:.1f} iterations, {s['mean_evals']:.0f} evaluations "
                f"and {s['mean_seconds'] * 1e3:.1f} ms per slot")


def _nanmean(a: np.ndarray) -> float:
    """The mean of the finite entries (nan when there are none, without numpy's warning)."""
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _env_slice(st: M.QueueState, e: int) -> M.QueueState:
    s = slice(e, e + 1)
    return M.QueueState(st.q_loc[s], st.q_rsu[s], st.energy[s], st.hist_q_loc[s], st.hist_lam_loc[s],
                        st.hist_q_rsu[s], st.hist_lam_rsu[s], st.t)


def _tasks_slice(tk: M.Tasks, e: int) -> M.Tasks:
    s = slice(e, e + 1)
    return M.Tasks(tk.size[s], tk.instr[s], tk.intensity[s], tk.co_intensity[s], tk.deadline[s])
