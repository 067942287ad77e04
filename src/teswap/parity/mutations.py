"""Deliberate faults in the swap, to prove the parity check catches them (`teswap check --mutate NAME`).

Each mutation is a scoped patch (restored on exit) of one thing a real swap could get wrong, made
where a real adapter or layer would get it wrong (a family's rules or TE arguments, the twin's math):

    gate-up-swapped      fc1's halves exchanged: the activation (SiLU, or GeGLU's GELU) on up, not gate
    layer-at-init        one decoder layer keeps its fresh initialisation instead of the stock weights
    rope-base-10000      RoPE from TE's default base 10000, ignoring the model's rope_theta and scaling
    fp8-skipped          the swapped model runs its GEMMs in bf16 while claiming an FP8 recipe
    qkv-bias-dropped     the q/k/v biases left out of the mapping (TE's biases stay zero)      Qwen2, Qwen3+bias
    window-off-by-one    TE's window_size (W, 0) instead of (W - 1, 0): one key too many       sliding windows
    qk-norm-skipped      the q/k RMSNorm not applied (twin)                                    Qwen3, Gemma3
    gamma-not-centred    w instead of 1 + w for a zero-centred RMSNorm gamma                   Gemma, Gemma3
    renormalisation-skipped  the top-k weights not divided by their sum                       Mixtral, Qwen3-MoE+norm
    experts-exchanged    experts 0 and 1 given each other's weights in the mapping             MoE (grouped experts)
    router-bf16          the router's softmax in bf16 instead of fp32 (twin)                   MoE (grouped experts)
    norm-topk-prob-ignored  Qwen3-MoE renormalised as Mixtral is, whatever norm_topk_prob says  Qwen3-MoE, norm off

A parity run under any of them must end with a swap FAIL (exit 1) at every precision it applies to;
tests/test_mutations.py, tests/test_family_parity.py and scripts/calibrate_policies.py check that.
A mutation that has nothing to break in a config (no window, no bias) is refused for it by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PretrainedConfig

from teswap.errors import TeswapError
from teswap.families import family_for_config
from teswap.families.base import Family
from teswap.families.rules import Rule


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _rules_transformed(transform: Callable[[Rule], Rule | None]) -> Any:
    """Every family's layer rules passed through `transform` (None drops a rule)."""
    original = Family.layer_rules

    def layer_rules(self, config, *, fuse_qkv):
        return [r for r in (transform(rule) for rule in original(self, config, fuse_qkv=fuse_qkv)) if r is not None]

    return _patched(Family, "layer_rules", layer_rules)


def _te_kwargs_transformed(transform: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    original = Family.te_layer_kwargs
    return _patched(Family, "te_layer_kwargs", lambda self, config, idx: transform(original(self, config, idx)))


def _halves_swapped(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    first, second = tensors[0].chunk(2, dim=0)
    return [torch.cat((second, first), dim=0)]


def gate_up_swapped() -> Any:
    def each_swapped(tensors: list[torch.Tensor]) -> list[torch.Tensor]:  # every expert's [gate; up]
        return [_halves_swapped([tensor])[0] for tensor in tensors]

    def transform(rule: Rule) -> Rule:
        if rule.hf == ("mlp.experts.gate_up_proj",) and rule.kind == "split_experts":
            return replace(rule, kind="mutated", to_te=lambda t: each_swapped(rule.to_te(t)),
                           to_hf=lambda t: rule.to_hf(each_swapped(t)))
        if rule.te not in (("layernorm_mlp.fc1_weight",), ("mlp.fc1.weight",)):
            return rule
        return replace(rule, kind="mutated", to_te=lambda t: _halves_swapped(rule.to_te(t)),
                       to_hf=lambda t: rule.to_hf(_halves_swapped(t)))

    return _rules_transformed(transform)


def layer_at_init(layer: int = 1) -> Any:
    from teswap.layers.rope import base_model_of
    from teswap.swap import pair

    original = pair._copy_weights

    def copy_then_reinitialise(stock, swapped, **kwargs):
        original(stock, swapped, **kwargs)
        with torch.no_grad():
            for parameter in base_model_of(swapped).layers[layer].parameters():
                if parameter.dim() > 1:  # the GEMM weights; norms keep their ones
                    parameter.normal_(0.0, swapped.config.initializer_range)

    return _patched(pair, "_copy_weights", copy_then_reinitialise)


def rope_base_10000() -> Any:
    from teswap.layers.rope import RopeTable

    original = RopeTable.freqs

    def te_default_base(self, position_ids, seq_len, device):
        freqs = original(self, position_ids, seq_len, device)
        head_dim = freqs.shape[-1]
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
        return torch.cat((angles, angles), dim=-1).reshape(seq_len, 1, 1, -1)

    return _patched(RopeTable, "freqs", te_default_base)


def fp8_skipped() -> Any:
    from teswap.parity import case

    return _patched(case, "swapped_autocast", lambda name, backend: nullcontext())


def qkv_bias_dropped() -> Any:
    def transform(rule: Rule) -> Rule:
        if not any(key.startswith("self_attn.") and key.endswith("_proj.bias") and "o_proj" not in key
                   for key in rule.hf):
            return rule
        return replace(rule, kind="mutated", to_te=lambda t: [torch.zeros_like(x) for x in rule.to_te(t)])

    return _rules_transformed(transform)


def window_off_by_one() -> Any:
    def transform(kwargs: dict[str, Any]) -> dict[str, Any]:
        window = kwargs.get("window_size")
        return kwargs if window is None else {**kwargs, "window_size": (window[0] + 1, window[1])}

    return _te_kwargs_transformed(transform)


def qk_norm_skipped() -> Any:
    from teswap.layers.torch_attention import MultiheadAttention

    return _patched(MultiheadAttention, "_qk_norm", lambda self, q, k: (q, k))


def gamma_not_centred() -> Any:
    def rule_transform(rule: Rule) -> Rule:
        return replace(rule, kind="mutated", to_te=list, to_hf=list, offset=0.0) if rule.kind == "unit_offset" else rule

    stack = [_te_kwargs_transformed(lambda kwargs: {**kwargs, "zero_centered_gamma": False}),
             _rules_transformed(rule_transform)]
    return _stacked(stack)


def renormalisation_skipped() -> Any:
    from teswap.families.moe import MoEFamily

    return _patched(MoEFamily, "moe_plan", _plan_with(lambda plan: replace(plan, renormalize=False)))


def norm_topk_prob_ignored() -> Any:
    from teswap.families.moe import MoEFamily

    return _patched(MoEFamily, "moe_plan", _plan_with(lambda plan: replace(plan, renormalize=True)))


def _plan_with(change: Callable[[Any], Any]) -> Callable[..., Any]:
    from teswap.families.moe import MoEFamily

    original = MoEFamily.moe_plan

    def moe_plan(self, config, layer_idx, experts):  # type: ignore[no-untyped-def]
        plan = original(self, config, layer_idx, experts)
        return None if plan is None else change(plan)

    return moe_plan


def experts_exchanged() -> Any:
    def exchanged(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [tensors[1], tensors[0], *tensors[2:]]

    def transform(rule: Rule) -> Rule:
        if rule.kind != "split_experts":
            return rule
        return replace(rule, kind="mutated", to_te=lambda t: exchanged(rule.to_te(t)),
                       to_hf=lambda t: rule.to_hf(exchanged(t)))

    return _rules_transformed(transform)


def router_bf16() -> Any:
    from teswap.layers import torch_moe

    return _patched(torch_moe, "ROUTER_SOFTMAX_DTYPE", torch.bfloat16)


@contextmanager
def _stacked(contexts: list[Any]) -> Iterator[None]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _has_window(config: PretrainedConfig) -> bool:
    family = family_for_config(config)
    return any(family.te_layer_kwargs(config, i).get("window_size") for i in range(config.num_hidden_layers))


def _layer_kwarg(name: str) -> Callable[[PretrainedConfig], bool]:
    return lambda config: bool(family_for_config(config).te_layer_kwargs(config, 0).get(name))


def _has_qkv_bias(config: PretrainedConfig) -> bool:
    return any(key.startswith("self_attn.q_proj.bias") for rule in family_for_config(config).layer_rules(
        config, fuse_qkv=False) for key in rule.hf)


def _is_moe(config: PretrainedConfig) -> bool:
    from teswap.families.moe import MoEFamily

    return isinstance(family_for_config(config), MoEFamily)


def _renormalises(config: PretrainedConfig) -> bool:
    family = family_for_config(config)
    return _is_moe(config) and family.renormalizes(config)  # type: ignore[attr-defined]


def _norm_topk_off(config: PretrainedConfig) -> bool:
    return _is_moe(config) and getattr(config, "norm_topk_prob", None) is False


def _always(config: PretrainedConfig) -> bool:
    return True


@dataclass(frozen=True)
class Mutation:
    make: Callable[[], Any]
    applies: Callable[[PretrainedConfig], bool]
    needs: str  # what a config must have for the mutation to break anything


MUTATIONS: dict[str, Mutation] = {
    "gate-up-swapped": Mutation(gate_up_swapped, _always, ""),
    "layer-at-init": Mutation(layer_at_init, _always, ""),
    "rope-base-10000": Mutation(rope_base_10000, _always, ""),
    "fp8-skipped": Mutation(fp8_skipped, _always, ""),
    "qkv-bias-dropped": Mutation(qkv_bias_dropped, _has_qkv_bias, "q/k/v biases (Qwen2, Qwen3 with attention_bias)"),
    "window-off-by-one": Mutation(window_off_by_one, _has_window, "a sliding window (Mistral, Phi-3, Qwen, Gemma3)"),
    "qk-norm-skipped": Mutation(qk_norm_skipped, _layer_kwarg("qk_norm_type"), "q/k norms (Qwen3, Gemma3)"),
    "gamma-not-centred": Mutation(gamma_not_centred, _layer_kwarg("zero_centered_gamma"),
                                  "zero-centred norms (Gemma, Gemma3)"),
    "renormalisation-skipped": Mutation(renormalisation_skipped, _renormalises,
                                        "renormalised top-k routing (Mixtral, Qwen3-MoE with norm_topk_prob)"),
    "experts-exchanged": Mutation(experts_exchanged, _is_moe, "mixture-of-experts layers (Mixtral, Qwen3-MoE)"),
    "router-bf16": Mutation(router_bf16, _is_moe, "mixture-of-experts layers (Mixtral, Qwen3-MoE)"),
    "norm-topk-prob-ignored": Mutation(norm_topk_prob_ignored, _norm_topk_off,
                                       "Qwen3-MoE with norm_topk_prob=False"),
}


def _known(name: str) -> Mutation:
    try:
        return MUTATIONS[name]
    except KeyError:
        raise TeswapError(f"unknown mutation {name!r}; choose one of: {', '.join(MUTATIONS)}") from None


def mutation(name: str, config: PretrainedConfig | None = None) -> Any:
    """The context manager of mutation `name`; with `config`, refused where it has nothing to break."""
    found = _known(name)
    if config is not None and not found.applies(config):
        raise TeswapError(f"mutation {name!r} has nothing to break in this {config.model_type} config: "
                          f"it needs {found.needs}")
    return found.make()


def applies_to(name: str, config: PretrainedConfig) -> bool:
    return _known(name).applies(config)
