"""ROME: Rank-One Model Editing.

Meng, Bau, Andonian, Belinkov, "Locating and Editing Factual Associations in GPT", NeurIPS 2022
(arXiv 2202.05262), §3 and Appendix; checked against kmeng01/rome (``rome/compute_u.py``,
``rome/compute_v.py``).

Per fact, at one mid-early layer's MLP down-projection W (d_out x d_in):

1. key k* = the down-projection input at the subject's last token, averaged over the bare prompt
   and ``n_prefixes`` short prefixes the model writes itself ("{prefix}. {prompt}");
2. value: a vector delta added to the MLP output at that token (in every template and in the
   "{subject} is a" KL prompt) is optimised with Adam so the model predicts the new target
   (``lune.editing.optimise_target``); v* = W k* + delta;
3. update: with C = E[k k^T] over ordinary text (``lune.editing.second_moments``, ridge added),
   u = C^-1 k* and dW = (v* - W k*) u^T / (u^T k*) = delta u^T / (u^T k*) (paper Eq. 2) — rank one,
   so k* maps to v* while keys uncorrelated with k* under C barely move.

Several facts are edited **sequentially**, as ROME does for several requests: fact i's value is
optimised on the model carrying the edits of facts 0..i-1, and the adapter's rank is the number of
facts (column i of lora_B/lora_A is fact i's rank-one update, all at the same layer). The keys at
the edited layer do not depend on that layer's own edits, so they are captured once.

Differences from the reference code: dW uses the template-averaged key k* in both u and the
denominator (the paper's Eq. 2; the code divides by the bare prompt's key); the weight decay is
the dimensionless (|delta| / |v0|)^2 (the code's |delta| / |v0|^2 depends on the model's scale);
optimisation stops once the target NLL (not the whole loss) is below 0.05; the default second
moments come from the model's own text instead of Wikipedia.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..config import _check, _f
from ..editing import (
    EditSettings, adapter_params, attach_edit_adapter, capture, find_arch, mean_per_fact, optimise_target,
    prepare_facts, round_layer, second_moments, set_update, target_nll,
)
from .base import EditMethod, register

LAYER_FRACTION = 0.17  # GPT-J: ROME edits layer 5 of 28; SmolLM2-135M (30 layers) -> layer 5


@dataclass
class RomeSettings(EditSettings):
    """ROME's options. Defaults follow the paper's GPT-2 XL / GPT-J hyperparameters except where noted.

    * ``layer``: None = round(0.17 * n_layers), the depth of GPT-J's layer 5 of 28 (ROME's causal
      tracing puts the subject's fact recall in early-middle MLPs); 5 of SmolLM2-135M's 30.
    * ``v_steps`` 20, ``v_lr`` 0.5, ``clamp_norm_factor`` 4, ``kl_factor`` 0.0625: ROME's values.
    * ``v_weight_decay`` 0.01 on (|delta|/|v0|)^2: at the clamp (|delta| = 4|v0|) it costs 0.16 nats,
      enough to prefer a small delta among those that reach the target, too little to block it.
    * ``n_prefixes`` 5 x ``prefix_len`` 10: MEMIT's five seeds at ROME's longer length; keys are
      averaged over these 6 templates (ROME uses 20; 6 keeps an edit cheap on a CPU).
    * ``stats_corpus`` "self", ``stats_tokens`` 20000: offline, > 10x the key size of a small model
      (1536 for SmolLM2-135M), and about 2 minutes of sampling on 2 CPU cores, once per model. On
      SmolLM2-135M layer 5, C from these tokens makes ROME's update reach 15 other capitals' keys
      (u^T k / u^T k*) 0.17 on average, vs 0.31 with C from Wikipedia text and 0.39 with C = I
      (``benchmarks/rome_key_overlap.py``).
    * ``stats_ridge`` 0.01: there the smallest eigenvalue of C is 0.16 x mean(diag C), so the ridge
      changes little; it keeps C invertible when a small corpus has fewer tokens than keys have dimensions.
    """

    layer: int | None = _f(None, "Layer whose MLP down-projection is edited; default round(0.17 * n_layers) (5 of 30 for SmolLM2-135M).", type=int)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.layer, str):  # from a CLI or a config file: "5", "auto"
            try:
                self.layer = None if self.layer.strip() in ("", "auto") else int(self.layer)
            except ValueError:
                raise ValueError(f"layer must be an integer or 'auto', got {self.layer!r}") from None
        _check(self.layer is None or self.layer >= 0, f"layer must be >= 0, got {self.layer}")


@register("rome")
class Rome(EditMethod):
    citation = "Meng et al. 2022, Locating and Editing Factual Associations in GPT, NeurIPS 2022 (arXiv 2202.05262), Eq. 2"
    Settings = RomeSettings

    def edit(self, model, tok, fmt, facts: list, targets: list[str], cache_dir=None):
        s: RomeSettings = self.settings
        t0 = time.perf_counter()
        arch = find_arch(model)
        layer = s.layer if s.layer is not None else round_layer(LAYER_FRACTION, arch.n_layers)
        arch.check_layers([layer], "rome layer")
        seed = int(getattr(self.cfg, "seed", 0))
        subjects, _, prefixes, rows, kls = prepare_facts(model, tok, fmt, facts, targets, s, seed)
        n = len(facts)
        stats = second_moments(model, tok, arch, [layer], s.stats_corpus, s.stats_tokens, cache_dir, seed)

        flat = [r for rs in rows for r in rs]
        keys, _ = capture(model, tok, arch, flat, [layer])
        K = mean_per_fact(keys[layer], flat, n).cpu().double()  # (n, d_in): k* per fact
        C = stats.regularised(layer, s.stats_ridge, K)
        Cinv_K = torch.linalg.solve(C, K.T)  # (d_in, n): u_i = C^-1 k*_i

        peft_model = attach_edit_adapter(model, arch, [layer], r=n)
        steps = tokens = 0
        delta_nll, delta_norm = [], []
        for i in tqdm(range(n), desc="rome: editing facts", leave=False):
            res = optimise_target(peft_model, tok, arch, layer, rows[i], [kls[i]], s, norm_at="mlp")
            u = Cinv_K[:, i]
            U = res.delta.cpu().double().unsqueeze(1) / float(u @ K[i])
            set_update(peft_model, arch, layer, U, u.unsqueeze(0), cols=slice(i, i + 1))
            steps += res.steps
            tokens += res.tokens
            delta_nll.append(res.nll)
            delta_norm.append(float(res.delta.norm() / res.init.norm().clamp_min(1e-8)))
        after = target_nll(peft_model, tok, [rs[0] for rs in rows])
        info = {
            "method": "rome",
            "steps": steps,
            "train_tokens": tokens,
            "trainable_params": adapter_params(peft_model, arch, [layer]),
            "layers": [layer],
            "rank": n,
            "sequential": True,
            "subjects": subjects,
            "context_prefixes": prefixes,
            "target_nll": after,  # the edited model, bare prompt, nats per target token
            "delta_nll": delta_nll,  # the optimised vector's loss over the templates
            "delta_rel_norm": delta_norm,  # |delta| / |original MLP output|
            "stats": stats.source,
            "stats_tokens": stats.tokens,
            "stats_seconds": round(stats.seconds, 2),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        return peft_model, info
