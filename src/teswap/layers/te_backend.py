"""The te backend: a family's decoder layer on TransformerEngine's modules (TE 2.x, read from its source).

The classes are made on demand because importing TE needs a CUDA build of its PyTorch extension; the
module itself imports nothing from TE. A family's plan (teswap.layers.plan) gives TE's arguments:
most families are one `te.pytorch.TransformerLayer`; Gemma3 is a composite of `MultiheadAttention`,
`RMSNorm`, `LayerNormMLP`, `RMSNorm` (TransformerLayer has no post-attention or post-MLP norm); the MoE
families (Mixtral, Qwen3-MoE) are te_mixtral's composite: `MultiheadAttention`, `RMSNorm` and an MoE block
(router `Linear`, `GroupedLinear` experts, `moe_permute`/`moe_unpermute`; or HF's own block).
Differences from TE's te_llama example, on purpose: RoPE from the HF model's own inv_freq (one shared
table per layer type), attention_scaling and the family's query scale honoured through the softmax
scale, kv_channels = config head_dim, layer_number = layer_idx + 1, a tensor returned, fresh weights
from config.initializer_range. HF's padding masks, per-row positions and KV cache go through TE's own
means: the padding_causal mask type on rows whose real tokens come first, and InferenceParams behind
HF's Cache interface (te_batch.py, te_cache.py); what TE cannot express is refused, never ignored.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig

from teswap.errors import UnsupportedConfigError
from teswap.hardware import te_api
from teswap.layers.hf_adapter import HFDecoderCall, keep_fresh_weights
from teswap.layers.hf_inputs import DecoderInputs
from teswap.layers.plan import COMPOSITE, HF_EXPERTS, MOE_COMPOSITE, LayerPlan
from teswap.layers.rope import attention_softmax_scale, shared_table_for
from teswap.layers.te_batch import TEBatch, te_batch
from teswap.layers.torch_backend import PlanSource, class_suffix, moe_class_attrs, swapped_class_name

# TE's DotProductAttention (2.0 ... 2.20) computes softmax_scale once in __init__ (default
# 1/sqrt(kv_channels); TransformerLayer has no softmax_scale argument) and hands it to its three
# backends, which keep it as `self.softmax_scale` and read it at every forward; DotProductAttention
# itself keeps none. Any of the three may run, so all three must take the override.
SOFTMAX_SCALE_HOLDERS = ("flash_attention", "fused_attention", "unfused_attention")
# The plan's arguments TransformerLayer has but MultiheadAttention / LayerNormMLP name otherwise or lack.
_MLP_ONLY = ("ffn_hidden_size", "activation")
_ATTENTION_ONLY = ("num_attention_heads", "num_gqa_groups", "kv_channels", "attention_dropout", "layer_number",
                   "window_size", "qk_norm_type", "qk_norm_eps", "qk_norm_before_rope", "qkv_weight_interleaved")


def check_te_versions(plan: LayerPlan, installed: te_api.TEVersion) -> None:
    """Refuse, naming the release, a plan whose TE arguments the installed TE lacks."""
    for since, feature in plan.te_versions:
        refusal = te_api.needs_version(feature, since, installed)
        if refusal:
            raise UnsupportedConfigError(f"{plan.family}: {refusal}")


def _constants() -> dict[str, Any]:
    return {"params_dtype": torch.get_default_dtype(),  # HF's _from_config sets it to the model dtype
            "device": torch.get_default_device()}


def _drop_none(kwargs: dict[str, Any]) -> dict[str, Any]:
    """TE's defaults stand for None (no window, no q/k norm): pass only what is set, as older TE lacks the names."""
    return {k: v for k, v in kwargs.items() if v is not None}


def te_transformer_layer_kwargs(plan: LayerPlan, *, fuse_qkv: bool) -> dict[str, Any]:
    """Every TransformerLayer argument we pass, by keyword (TE's positional order changes)."""
    return {**_drop_none(plan.te_kwargs), "fuse_qkv_params": fuse_qkv, "attn_input_format": "bshd",
            "self_attn_mask_type": "causal", **_constants()}


def te_composite_kwargs(plan: LayerPlan, *, fuse_qkv: bool) -> dict[str, dict[str, Any]]:
    """MultiheadAttention, RMSNorm and LayerNormMLP arguments of a composite layer, by keyword."""
    kw, constants = _drop_none(plan.te_kwargs), _constants()
    attention = {k: v for k, v in kw.items() if k not in _MLP_ONLY and k != "hidden_dropout"}
    mlp = {k: v for k, v in kw.items() if k not in _ATTENTION_ONLY and k not in ("hidden_dropout", "layernorm_epsilon")}
    return {
        "attention": {**attention, "attn_mask_type": "causal", "input_layernorm": True, "attention_type": "self",
                      "fuse_qkv_params": fuse_qkv, "qkv_format": "bshd", "return_bias": False, **constants},
        "mlp": {**mlp, "eps": kw["layernorm_epsilon"], "return_bias": False, **constants},
        # RMSNorm (an op-based module since TE 2.0) takes dtype and device as the op does; params_dtype is
        # its deprecated name
        "norm": {"normalized_shape": kw["hidden_size"], "eps": kw["layernorm_epsilon"],
                 "zero_centered_gamma": kw.get("zero_centered_gamma", False), "dtype": constants["params_dtype"],
                 "device": constants["device"]},
    }


def set_softmax_scale(layer: torch.nn.Module, scale: float) -> None:
    """Override TE's 1/sqrt(kv_channels); refuse if TE's layout moved."""
    core = layer.get_submodule("self_attention.core_attention")
    holders: dict[str, Any] = {name: getattr(core, name, None) for name in SOFTMAX_SCALE_HOLDERS}
    missing = [name for name, holder in holders.items() if not hasattr(holder, "softmax_scale")]
    if missing:
        version = te_api.format_version(te_api.imported_te_version())
        raise UnsupportedConfigError(
            f"TransformerEngine {version} keeps no softmax_scale on core_attention.{', core_attention.'.join(missing)} "
            "(TE 2.0-2.20 keeps it on its flash/fused/unfused attention backends): TE's layout moved, so a "
            "softmax scale other than 1/sqrt(head_dim) (yarn, longrope, Gemma3's query_pre_attn_scalar) "
            "cannot be honoured by the te backend")
    for holder in holders.values():
        holder.softmax_scale = scale


class TEDecoder(HFDecoderCall):
    """The te backend's HF-facing layer; a family's class adds TE's modules (`build_te` or TransformerLayer)."""

    backend = "te"
    fuse_qkv_params = False
    plan_source: PlanSource
    te: Any  # transformer_engine.pytorch

    def _setup(self, config: PretrainedConfig, layer_idx: int, plan: LayerPlan) -> None:
        keep_fresh_weights(self, plan.frozen_zero)  # type: ignore[arg-type]
        self.layer_idx = layer_idx
        self.layer_plan_used = plan
        self.hf_config = config
        self.rope = shared_table_for(config, plan)  # `bind_rope` re-points it at the model's own
        scale = attention_softmax_scale(self.rope, plan.te_kwargs["kv_channels"], plan.query_scale)
        if scale != plan.te_kwargs["kv_channels"] ** -0.5:
            set_softmax_scale(self, scale)  # type: ignore[arg-type]

    def te_forward(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> torch.Tensor:
        batch = self._batch(hidden_states, inputs)
        out = self.te_body(batch.to_te(hidden_states), batch)
        return batch.from_te(out)

    def te_body(self, hidden_states: torch.Tensor, batch: TEBatch) -> torch.Tensor:
        raise NotImplementedError

    def _batch(self, hidden_states: torch.Tensor, inputs: DecoderInputs) -> TEBatch:
        """The first layer works out TE's view of the forward (and steps the KV cache); the others reuse it,
        checking their own mask (a sliding layer's differs from a full one's) against it."""
        shared = self.rope.per_forward
        key = (id(inputs.position_ids), id(inputs.cache))
        batch = shared.get("te_batch")
        if self.layer_idx == 0 or batch is None or batch.key != key:
            batch = shared["te_batch"] = te_batch(self.te, self.hf_config, hidden_states, inputs,
                                                  window=self.layer_plan_used.window_size)
        else:
            batch.check_mask(inputs.attention_mask, self.layer_plan_used.window_size)
        return batch


def _transformer_layer_class(te: Any) -> type:
    class TETransformerLayerDecoder(TEDecoder, te.TransformerLayer):
        def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
            plan = self.plan_source.layer_plan(config, layer_idx)
            check_te_versions(plan, te_api.imported_te_version())
            te.TransformerLayer.__init__(self, **te_transformer_layer_kwargs(plan, fuse_qkv=self.fuse_qkv_params))
            self._setup(config, layer_idx, plan)

        def te_body(self, hidden_states: torch.Tensor, batch: TEBatch) -> torch.Tensor:
            return te.TransformerLayer.forward(
                self, hidden_states, attention_mask=batch.attention_mask, self_attn_mask_type=batch.mask_type,
                rotary_pos_emb=batch.freqs_for(self.rope), inference_params=batch.inference_params)

    return TETransformerLayerDecoder


def _composite_class(te: Any) -> type:
    class TECompositeDecoder(TEDecoder, nn.Module):
        """MultiheadAttention + RMSNorm + LayerNormMLP + RMSNorm of TE's modules: not a TransformerLayer."""

        def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
            nn.Module.__init__(self)
            plan = self.plan_source.layer_plan(config, layer_idx)
            check_te_versions(plan, te_api.imported_te_version())
            kwargs = te_composite_kwargs(plan, fuse_qkv=self.fuse_qkv_params)
            self.self_attention = te.MultiheadAttention(**kwargs["attention"])
            self.post_attention_layernorm = te.RMSNorm(**kwargs["norm"])
            self.layernorm_mlp = te.LayerNormMLP(**kwargs["mlp"])
            self.post_feedforward_layernorm = te.RMSNorm(**kwargs["norm"])
            self._setup(config, layer_idx, plan)

        def te_body(self, hidden_states: torch.Tensor, batch: TEBatch) -> torch.Tensor:
            attention = self.self_attention(
                hidden_states, attention_mask=batch.attention_mask, attn_mask_type=batch.mask_type,
                rotary_pos_emb=batch.freqs_for(self.rope), inference_params=batch.inference_params)
            hidden_states = hidden_states + self.post_attention_layernorm(attention)
            return hidden_states + self.post_feedforward_layernorm(self.layernorm_mlp(hidden_states))

    return TECompositeDecoder


def te_linear_kwargs(constants: dict[str, Any], init_method: Any) -> dict[str, Any]:
    """te.Linear / te.GroupedLinear arguments beyond the shapes, by keyword (TE 2.0 ... 2.20 all take them)."""
    return {"bias": False, "init_method": init_method, **constants}


def _moe_blocks(te: Any) -> dict[str, type]:
    """te_mixtral's MoE block on TE's modules: router te.Linear, moe_permute, GroupedLinear, moe_unpermute."""
    from teswap.layers.fused_kernels import gated_activation
    from teswap.layers.torch_moe import route, tokens_per_expert

    class TERouter(te.Linear):
        """te.Linear [E, H] holding the router's weight; the logits are computed outside FP8 (as Megatron keeps
        the router high precision, and HF's stock model does), then HF's routing."""

        def __init__(self, hidden: int, plan: Any, init_method: Any) -> None:
            te.Linear.__init__(self, hidden, plan.num_experts, **te_linear_kwargs(_constants(), init_method))
            self.plan = plan

        def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits = torch.nn.functional.linear(hidden_states, self.weight)
            return (logits, *route(logits, self.plan.top_k, renormalize=self.plan.renormalize,
                                   scores_in_input_dtype=self.plan.scores_in_input_dtype))

    class TEGroupedExperts(nn.Module):
        def __init__(self, hidden: int, plan: Any, activation: str, init_method: Any, output_init: Any) -> None:
            super().__init__()
            self.plan, self.activation = plan, activation
            self.router = TERouter(hidden, plan, init_method)
            self.experts_fc1 = te.GroupedLinear(plan.num_experts, hidden, 2 * plan.ffn_hidden_size,
                                                **te_linear_kwargs(_constants(), init_method))
            self.experts_fc2 = te.GroupedLinear(plan.num_experts, plan.ffn_hidden_size, hidden,
                                                **te_linear_kwargs(_constants(), output_init))

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            shape = hidden_states.shape
            flat = hidden_states.reshape(-1, shape[-1])
            _, scores, indices = self.router(flat)
            rows, row_map = te.moe_permute(flat, indices.to(torch.int32), num_out_tokens=indices.numel(),
                                           map_type="index")
            m_splits = tokens_per_expert(indices, self.plan.num_experts).tolist()
            hidden = self.experts_fc1(rows, m_splits)
            hidden = self.experts_fc2(gated_activation(hidden, self.activation).rounded, m_splits)
            out = te.moe_unpermute(hidden, row_map, merging_probs=scores.float(), map_type="index")
            return out.view(shape)

    class TEDenseMLP(nn.Module):
        """A dense layer's MLP among MoE ones: te.Linear fc1 ([gate; up]), the gated activation, te.Linear fc2."""

        def __init__(self, hidden: int, ffn: int, activation: str, init_method: Any, output_init: Any) -> None:
            super().__init__()
            self.activation = activation
            self.fc1 = te.Linear(hidden, 2 * ffn, **te_linear_kwargs(_constants(), init_method))
            self.fc2 = te.Linear(ffn, hidden, **te_linear_kwargs(_constants(), output_init))

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return self.fc2(gated_activation(self.fc1(hidden_states), self.activation).rounded)

    return {"router": TERouter, "grouped": TEGroupedExperts, "dense": TEDenseMLP}


def _moe_composite_class(te: Any) -> type:
    blocks = _moe_blocks(te)

    class TEMoECompositeDecoder(TEDecoder, nn.Module):
        """MultiheadAttention + RMSNorm + an MoE block of TE's modules (te_mixtral's layer): not a TransformerLayer."""

        router_class = blocks["router"]

        def __init__(self, config: PretrainedConfig, layer_idx: int) -> None:
            nn.Module.__init__(self)
            plan = self.plan_source.layer_plan(config, layer_idx)
            check_te_versions(plan, te_api.imported_te_version())
            kwargs = te_composite_kwargs(plan, fuse_qkv=self.fuse_qkv_params)
            self.self_attention = te.MultiheadAttention(**kwargs["attention"])
            self.post_attention_layernorm = te.RMSNorm(**kwargs["norm"])
            te_kwargs = plan.te_kwargs
            hidden, activation = te_kwargs["hidden_size"], te_kwargs.get("activation", "swiglu")
            inits = (te_kwargs.get("init_method"), te_kwargs.get("output_layer_init_method"))
            if plan.moe is None:
                self.mlp = blocks["dense"](hidden, te_kwargs["ffn_hidden_size"], activation, *inits)
            elif plan.moe.experts == HF_EXPERTS and plan.moe.hf_block is not None:
                self.mlp = plan.moe.hf_block()  # HF's own block, as it is (only attention and norms on TE)
            else:
                self.mlp = blocks["grouped"](hidden, plan.moe, activation, *inits)
            self._setup(config, layer_idx, plan)

        def te_body(self, hidden_states: torch.Tensor, batch: TEBatch) -> torch.Tensor:
            attention = self.self_attention(
                hidden_states, attention_mask=batch.attention_mask, attn_mask_type=batch.mask_type,
                rotary_pos_emb=batch.freqs_for(self.rope), inference_params=batch.inference_params)
            hidden_states = hidden_states + attention
            return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))

    return TEMoECompositeDecoder


@functools.cache
def _bodies(te: Any) -> dict[str, type]:
    return {"TransformerLayer": _transformer_layer_class(te), COMPOSITE: _composite_class(te),
            MOE_COMPOSITE: _moe_composite_class(te)}


def te_decoder_class(plan_source: PlanSource, *, fuse_qkv: bool = False) -> type:
    """A family's TE decoder class (imports transformer_engine.pytorch now; cached per TE module)."""
    import transformer_engine.pytorch as te

    return _te_class(te, plan_source, fuse_qkv)  # type: ignore[arg-type]  # a family adapter is hashable


@functools.cache
def _te_class(te: Any, plan_source: PlanSource, fuse_qkv: bool) -> type:
    base = _bodies(te)[plan_source.layout]
    name = swapped_class_name("TE", plan_source.name, plan_source.layout, fuse_qkv, class_suffix(plan_source))
    moe = moe_class_attrs(plan_source)
    if moe and moe["experts"] != HF_EXPERTS:
        moe["router_class"] = getattr(base, "router_class")  # noqa: B009  TE's router module (HF's under HF experts)
    attrs = {"__module__": __name__, "plan_source": plan_source, "fuse_qkv_params": fuse_qkv,
             "family": plan_source.name, "te": te, **moe,
             "__doc__": f"A drop-in for {plan_source.name}'s decoder layer on TransformerEngine's modules."}
    cls = type(name, (base,), attrs)
    cls.__qualname__ = name
    return cls
