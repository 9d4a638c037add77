"""MEMIT: Mass-Editing Memory in a Transformer.

Meng, Sharma, Andonian, Belinkov, Bau, "Mass-Editing Memory in a Transformer", ICLR 2023
(arXiv 2210.07229), Eqs. 14-20 and Algorithm 1; checked against kmeng01/memit
(``memit/memit_main.py``, ``memit/compute_z.py``, ``memit/compute_ks.py``).

All facts are edited in one batch, spread over a range of layers L = l_1 < ... < l_m:

1. target z_i per fact at the **last** layer of L: a vector delta is added at the subject's last
   token to that layer's MLP output, which is the same as adding it to the block's output (the
   residual stream) there, and optimised as ROME's value (target NLL over the context templates +
   KL on "{subject} is a" + weight decay; |delta| clamped to ``clamp_norm_factor`` times the norm of
   the residual stream h0 there, MEMIT's convention); z_i = h0_i + delta_i, computed on the
   unedited model;
2. for each layer l in L, ascending, on the model carrying the updates of the earlier layers:
   K (d_in x n) = keys (down-projection inputs at the subject's last token, averaged over the
   templates), h_i = the residual stream at the last layer of L on the bare prompt,
   R = (z - h) / (layers left, l included), and
   dW_l = R K^T (lambda C_l + K K^T)^-1, stored as U = R (d_out x n), V = ((lambda C_l + K K^T)^-1 K)^T.

Every layer's update has the same n columns (n = number of facts; its rank is at most n), so the
adapter uses one common r = n: no rank_pattern and no padding.

On lambda (``mom2_update_weight``): C_l is the *mean* k k^T (as in MEMIT's code), so lambda C_l
stands for lambda "typical" keys that must keep their values, and lambda does not depend on how
many tokens C was estimated from (more tokens only make C less noisy). What it does depend on is
the key size d_in: for a typical key s = k^T (lambda C)^-1 k ~ d_in / lambda, and a single edit
writes the share s / (1 + s) of its residual at each layer. MEMIT's 15000 was tuned on GPT-J
(d_in = 16384, s ~ 1.1); the default keeps that ratio, lambda = 15000 * d_in / 16384 (1406 for
SmolLM2-135M's 1536).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import _check, _f, parse_layers
from ..editing import (
    EditSettings, adapter_params, attach_edit_adapter, capture, find_arch, mean_per_fact, optimise_target,
    prepare_facts, round_layer, second_moments, set_update, target_nll,
)
from ..errors import LuneError
from .base import EditMethod, register

FIRST_FRACTION, SPAN = 0.1, 5  # GPT-J: MEMIT edits layers 3-8 of 28; SmolLM2-135M (30 layers) -> 3-7
GPTJ_LAMBDA, GPTJ_D_IN = 15000.0, 16384


def default_layers(n_layers: int) -> list[int]:
    first = round_layer(FIRST_FRACTION, n_layers)
    return list(range(first, min(n_layers, first + SPAN)))


@dataclass
class MemitSettings(EditSettings):
    """MEMIT's options. Defaults follow MEMIT's GPT-J hyperparameters except where noted.

    * ``layers``: "auto" = 5 consecutive layers from round(0.1 * n_layers) (GPT-J: 3-8 of 28;
      SmolLM2-135M: 3-7 of 30), or a range "3-7" / list "3,5,7".
    * ``v_steps`` 25, ``v_lr`` 0.5, ``kl_factor`` 0.0625: MEMIT's values; ``clamp_norm_factor`` 0.75:
      MEMIT's GPT-J value, relative to the residual stream (much larger than an MLP output).
    * ``mom2_update_weight``: None = 15000 * d_in / 16384 (see the module docstring).
    * the rest as ROME (``lune.methods.rome.RomeSettings``).
    """

    v_steps: int = _f(25, "Adam steps at most when optimising each fact's target z (stops early once the target NLL < 0.05).")
    clamp_norm_factor: float = _f(0.75, "The change of z is clamped to this multiple of the residual stream's norm (MEMIT's GPT-J value).")
    layers: str = _f("auto", "Edited layers: 'auto' (5 consecutive layers from round(0.1 * n_layers): 3-7 of SmolLM2-135M's 30), a range '3-7' or a list '3,5,7'.")
    mom2_update_weight: float | None = _f(None, "lambda in (lambda C + K K^T)^-1; default 15000 * d_in / 16384 (MEMIT's GPT-J value, rescaled by key size).", type=float)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.layers, (list, tuple)):  # [3, 4, 5] from a config file
            _check(len(self.layers) > 0 and all(isinstance(i, int) for i in self.layers), f"layers: expected a list of ints, got {self.layers!r}")
            self.layers = ",".join(str(i) for i in self.layers)
        self.layers = str(self.layers).strip() or "auto"
        if self.layers != "auto":
            parse_layers(self.layers)
        _check(self.mom2_update_weight is None or self.mom2_update_weight > 0,
               f"mom2_update_weight must be > 0, got {self.mom2_update_weight}")


@register("memit")
class Memit(EditMethod):
    citation = "Meng et al. 2023, Mass-Editing Memory in a Transformer, ICLR 2023 (arXiv 2210.07229), Eq. 14"
    Settings = MemitSettings

    def edit(self, model, tok, fmt, facts: list, targets: list[str], cache_dir=None):
        s: MemitSettings = self.settings
        t0 = time.perf_counter()
        arch = find_arch(model)
        if s.layers == "auto":
            layers = default_layers(arch.n_layers)
        else:
            layers = parse_layers(s.layers, arch.n_layers) or list(range(arch.n_layers))
        arch.check_layers(layers, "memit layers")
        z_layer = layers[-1]
        lam = s.mom2_update_weight if s.mom2_update_weight is not None else GPTJ_LAMBDA * arch.d_in / GPTJ_D_IN
        seed = int(getattr(self.cfg, "seed", 0))
        subjects, _, prefixes, rows, kls = prepare_facts(model, tok, fmt, facts, targets, s, seed)
        n = len(facts)
        stats = second_moments(model, tok, arch, layers, s.stats_corpus, s.stats_tokens, cache_dir, seed)

        # 1. targets z_i at the last layer, on the unedited model
        zs, ds, steps, tokens, delta_nll = [], [], 0, 0, []
        for i in tqdm(range(n), desc="memit: target vectors", leave=False):
            res = optimise_target(model, tok, arch, z_layer, rows[i], [kls[i]], s, norm_at="block")
            zs.append(res.init + res.delta)
            ds.append(res.delta)
            steps += res.steps
            tokens += res.tokens
            delta_nll.append(res.nll)
        Z = torch.stack(zs).cpu().double()  # (n, d_out)
        D = torch.stack(ds).cpu().double()

        # 2. spread the change over the layers, lowest first
        peft_model = attach_edit_adapter(model, arch, layers, r=n)
        flat = [r for rs in rows for r in rs]
        bare = torch.tensor([sum(len(rs) for rs in rows[:i]) for i in range(n)])
        resid_norms = []
        for j, l in enumerate(layers):
            keys, h = capture(peft_model, tok, arch, flat, [l], block_layer=z_layer)
            K = mean_per_fact(keys[l], flat, n).cpu().double()  # (n, d_in)
            R = (Z - h[bare].cpu().double()) / (len(layers) - j)  # (n, d_out)
            resid_norms.append(float((Z - h[bare].cpu().double()).norm(dim=1).mean()))
            C = stats.regularised(l, s.stats_ridge, K)
            try:
                adj = torch.linalg.solve(lam * C + K.T @ K, K.T)  # (d_in, n)
            except RuntimeError as e:  # singular: only with a degenerate C and stats_ridge 0
                raise LuneError(f"memit: the key statistics of layer {l} are singular ({e}); set stats_ridge > 0") from None
            set_update(peft_model, arch, l, R.T, adj.T)
        _, h = capture(peft_model, tok, arch, [rs[0] for rs in rows], [], block_layer=z_layer)
        left = (Z - h.cpu().double()).norm(dim=1) / D.norm(dim=1).clamp_min(1e-12)
        after = target_nll(peft_model, tok, [rs[0] for rs in rows])
        info = {
            "method": "memit",
            "steps": steps,
            "train_tokens": tokens,
            "trainable_params": adapter_params(peft_model, arch, layers),
            "layers": layers,
            "z_layer": z_layer,
            "rank": n,
            "mom2_update_weight": lam,
            "subjects": subjects,
            "context_prefixes": prefixes,
            "target_nll": after,  # the edited model, bare prompt, nats per target token
            "delta_nll": delta_nll,  # the optimised z's loss over the templates
            "residual_norm_before_layer": resid_norms,  # mean |z - h| before each layer's update
            "z_residual_left": [round(float(x), 4) for x in left],  # |z - h| after the edit / |delta|: 0 = z reached
            "stats": stats.source,
            "stats_tokens": stats.tokens,
            "stats_seconds": round(stats.seconds, 2),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return peft_model, info
