"""The faster PPO update trains bit-identically to the reference one (torch's Adam, gathered minibatches).

The reference is the update as it was before (commit 125c673): minibatches gathered by index from
``tensor_split(randperm(n), n_mb)``, ``clip_grad_norm_(foreach=True)`` per network and
``torch.optim.Adam(foreach=True)``. It is written out here, so these tests compare against that code
path itself, not against numbers the new code produced.
"""

import math

import pytest
import torch
from torch import nn

from agents import make_trainer
from agents.common import FlatAdam
from agents.mappo import gaussian_logprob
from cosim.config import load_config


def reference_update(tr, advantages, returns):
    """MAPPOTrainer._update of commit 125c673 (gathers, torch Adam and clipping), statistics left out."""
    c, I = tr.c, tr.I
    n = tr.T * tr.E
    b_obs, b_state = tr.obs.reshape(n, I, tr.D), tr.state.reshape(n, tr.S)
    b_act, b_logp = tr.actions.reshape(n, I, tr.A), tr.logprobs.reshape(n, I)
    b_adv, b_ret = advantages.reshape(n, I), returns.reshape(n, I)
    b_mask = tr.masks.reshape(n, I, tr.A)
    if c.adv_norm:
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
    b_target = tr.value_norm.normalize(b_ret) if c.value_norm else b_ret
    n_mb = max(1, round(n * I / c.batch_size))
    actor_params = [*tr.actor_net.parameters(), tr.log_std]
    critic_params = list(tr.critic.parameters())
    for _ in range(c.epochs):
        for mb in torch.tensor_split(torch.randperm(n), n_mb):
            mean, log_std = tr._policy(b_obs[mb])
            logp = gaussian_logprob(b_act[mb], mean, log_std, b_mask[mb])
            ratio = (logp - b_logp[mb]).exp()
            adv = b_adv[mb]
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c.clip, 1 + c.clip)).mean()
            entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean()
            value_loss = ((tr._value(b_state[mb], b_obs[mb]) - b_target[mb]) ** 2).mean()
            loss = policy_loss - c.entropy_coef * entropy + c.value_coef * value_loss
            tr.actor_opt.zero_grad()
            tr.critic_opt.zero_grad()
            loss.backward()
            if c.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(actor_params, c.max_grad_norm, foreach=True)
                nn.utils.clip_grad_norm_(critic_params, c.max_grad_norm, foreach=True)
            tr.actor_opt.step()
            tr.critic_opt.step()
    return {}


def reference_trainer(cfg):
    tr = make_trainer("ly-dtmppo", cfg)
    c = tr.c
    tr.actor_opt = torch.optim.Adam([*tr.actor_net.parameters(), tr.log_std], lr=c.lr, eps=1e-5, foreach=True)
    tr.critic_opt = torch.optim.Adam(tr.critic.parameters(), lr=c.critic_lr, eps=1e-5, foreach=True)
    tr._update = lambda adv, ret: reference_update(tr, adv, ret)
    return tr


def learned(tr):
    return [t.detach().clone() for t in (*tr.actor_net.parameters(), tr.log_std, *tr.critic.parameters())]


def moments(opt):
    return [t.clone() for st in opt.state_dict()["state"].values() for t in (st["exp_avg"], st["exp_avg_sq"])]


@pytest.mark.parametrize("arch", ["mlp", "set"])
def test_update_trains_bit_identically_to_the_reference(arch):
    # 3 iterations of 3 CVs x 4 envs: 90 slots x 3 agents, 10 epochs of minibatches of 54 agent-samples;
    # max_grad_norm 0.05 makes the clipping act on every step (the default 10 rarely does).
    sets = {"scenario.n_cvs": 3, "training.n_envs": 4, "training.batch_size": 54, "training.max_grad_norm": 0.05,
            "training.hidden": 32, "training.arch": arch}
    cfg = load_config(["configs/shipped.yaml"]).replace(backend="analytic", seed=3, **sets)
    fast = make_trainer("ly-dtmppo", cfg)  # each make_trainer seeds torch's global generator: one after the other
    for i in range(3):
        fast.iterate(4 * i)
    ref = reference_trainer(cfg)
    for i in range(3):
        ref.iterate(4 * i)
    a, b = learned(fast), learned(ref)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], learned(make_trainer("ly-dtmppo", cfg))[0])  # it did learn
    for f, r in ((fast.actor_opt, ref.actor_opt), (fast.critic_opt, ref.critic_opt)):
        assert all(torch.equal(x, y) for x, y in zip(moments(f), moments(r), strict=True))
        assert [st["step"].item() for st in f.state_dict()["state"].values()] == \
            [st["step"].item() for st in r.state_dict()["state"].values()] == [3 * 10 * round(30 * 4 * 3 / 54)] * len(f.param_groups[0]["params"])


def _problem(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(7, 33), nn.ReLU(), nn.Linear(33, 5))
    extra = nn.Parameter(torch.randn(1, 11))  # odd sizes: 7*33, 33, 165, 5, 11 floats (not whole vectors)
    return net, extra


def _loss(net, extra, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(64, 7, generator=g)
    return (net(x) ** 2).mean() + (extra ** 3).sum() * 0.1


@pytest.mark.parametrize("max_norm", [0.0, 0.1, 1e6])
def test_flat_adam_equals_torch_adam_with_clipping(max_norm):
    net_a, extra_a = _problem(0)
    net_b, extra_b = _problem(0)
    pa, pb = [*net_a.parameters(), extra_a], [*net_b.parameters(), extra_b]
    ref = torch.optim.Adam(pa, lr=3e-3, eps=1e-5, foreach=True)
    flat = FlatAdam(pb, lr=3e-3, eps=1e-5)
    for step in range(25):
        ref.zero_grad()
        _loss(net_a, extra_a, step).backward()
        if max_norm > 0:
            nn.utils.clip_grad_norm_(pa, max_norm, foreach=True)
        ref.step()
        flat.zero_grad()
        _loss(net_b, extra_b, step).backward()
        flat.clip_and_step(max_norm)
        assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert all(torch.equal(x, y) for x, y in zip(moments(ref), moments(flat)))


def test_flat_adam_resumes_from_its_own_and_from_torchs_state():
    """A state dict of either optimiser loaded into a fresh FlatAdam continues exactly as the uninterrupted run."""
    net_a, extra_a = _problem(1)
    pa = [*net_a.parameters(), extra_a]
    ref = torch.optim.Adam(pa, lr=1e-2, eps=1e-5, foreach=True)

    def run(opt, params, net, extra, steps, clip_and_step):
        for step in steps:
            opt.zero_grad()
            _loss(net, extra, step).backward()
            if clip_and_step:
                opt.clip_and_step(0.5)
            else:
                nn.utils.clip_grad_norm_(params, 0.5, foreach=True)
                opt.step()

    run(ref, pa, net_a, extra_a, range(10), False)
    half_params, half_state = [p.detach().clone() for p in pa], ref.state_dict()
    import copy
    half_state = copy.deepcopy(half_state)
    run(ref, pa, net_a, extra_a, range(10, 20), False)
    for source in ("torch", "flat"):
        net_b, extra_b = _problem(1)
        pb = [*net_b.parameters(), extra_b]
        if source == "flat":  # a FlatAdam's own state dict, taken after 10 steps
            first = FlatAdam(pb, lr=1e-2, eps=1e-5)
            run(first, pb, net_b, extra_b, range(10), True)
            state = copy.deepcopy(first.state_dict())
            net_b, extra_b = _problem(9)  # fresh networks, other weights: the load must set everything
            pb = [*net_b.parameters(), extra_b]
        else:
            state = half_state
        with torch.no_grad():
            for p, v in zip(pb, half_params):
                p.copy_(v)
        opt = FlatAdam(pb, lr=1e-2, eps=1e-5)
        opt.load_state_dict(state)
        run(opt, pb, net_b, extra_b, range(10, 20), True)
        assert all(torch.equal(x, y) for x, y in zip(pa, pb)), source
        assert all(torch.equal(x, y) for x, y in zip(moments(ref), moments(opt))), source
