"""`Family`: what one model family tells teswap. Llama's conventions are the defaults; each family's
module subclasses it and overrides what differs (torchtitan keeps one adapter per model likewise).

A family says:
- its HF classes (`HFClasses`): the modeling module whose decoder-layer global the swap patches, the
  PreTrainedModel base every model class of the family derives from (the swap finishes each model
  built under it there), the base model, the causal LM, the other heads, the rotary module;
- what its configs may hold, and what neither backend can express (`problems`: refused by name);
- TE's arguments for each layer (`te_layer_kwargs`, TE's names; both backends build from them) and
  the TE releases they need (`te_versions`);
- the HF <-> TE mapping of one layer's tensors (`layer_rules`, teswap.families.rules).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

from transformers import PretrainedConfig, PreTrainedModel

from teswap.errors import UnsupportedConfigError
from teswap.families import rules
from teswap.families.rules import Rule
from teswap.layers.hf_adapter import head_dim_of, kv_groups_of
from teswap.layers.plan import TRANSFORMER_LAYER, LayerPlan
from teswap.layers.torch_modules import normal_init


@dataclass(frozen=True, kw_only=True)
class HFClasses:
    """Names in one transformers modeling module."""

    module: str  # e.g. "transformers.models.llama.modeling_llama"
    decoder: str  # the decoder-layer class, looked up as a module global when the base model is built
    pretrained: str  # the family's PreTrainedModel: every model class below derives from it
    base_model: str
    causal_lm: str
    heads: tuple[str, ...]  # sequence/token classification, question answering, ...
    rotary: str
    config: str  # the config class, from transformers' top level

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def config_class(self) -> type[PretrainedConfig]:
        import transformers

        return getattr(transformers, self.config)


def hf_window(config: PretrainedConfig, layer_idx: int) -> int | None:
    """HF's sliding window (keys a query sees, itself included) of a layer with `layer_types`, else None."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types and layer_types[layer_idx] == "sliding_attention":
        return config.sliding_window
    return None


def llama_dims(config: PretrainedConfig) -> dict[str, Any]:
    """The shape of a Llama config, as the keyword arguments every family's config takes."""
    names = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
             "rope_parameters", "initializer_range")
    tokens = ("bos_token_id", "eos_token_id", "pad_token_id")  # the tokenizer's, None included
    return {**{name: getattr(config, name) for name in names if getattr(config, name, None) is not None},
            **{name: getattr(config, name, None) for name in tokens}}


LAYER_INDEX = "_teswap_layer_idx"  # set on a config view by `at_layer`


def at_layer(config: PretrainedConfig, layer_idx: int) -> PretrainedConfig:
    """A shallow copy of `config` that says which layer is asked about (read by `layer_index_of`)."""
    view = copy.copy(config)
    view.__dict__[LAYER_INDEX] = layer_idx
    return view


def layer_index_of(config: PretrainedConfig) -> int | None:
    """The layer a config view from `at_layer` is about; None: every layer."""
    return config.__dict__.get(LAYER_INDEX)


def te_window(window: int | None) -> tuple[int, int] | None:
    """HF's window of W keys (the current one included) in TE's terms: (W - 1, 0)."""
    return None if window is None else (window - 1, 0)


class Family:
    """A pre-norm RoPE decoder family; a family module sets the class attributes and overrides what differs."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]  # config.model_type values; the first keys HF's conversion mapping
    hf: ClassVar[HFClasses]
    layout: ClassVar[str] = TRANSFORMER_LAYER
    scales_embeddings: ClassVar[bool] = False  # the base model multiplies embed_tokens' output (Gemma's sqrt(h))
    presets: ClassVar[dict[str, Callable[[], PretrainedConfig]]] = {}  # name -> config (random weights)
    activation: ClassVar[str] = "swiglu"  # TE's name; fc1 = [gate; up], the activation on the first half
    hf_activations: ClassVar[tuple[str, ...]] = ("silu",)  # config.hidden_act values that mean it
    activation_field: ClassVar[str] = "hidden_act"

    # --- HF's classes ------------------------------------------------------------------------------
    def module(self) -> ModuleType:
        return self.hf.load()

    def causal_lm_class(self) -> type[PreTrainedModel]:
        return getattr(self.module(), self.hf.causal_lm)

    def model_classes(self) -> dict[str, type[PreTrainedModel]]:
        """Every model class of the family that holds the decoder layers: base, causal LM, heads."""
        module = self.module()
        names = (self.hf.base_model, self.hf.causal_lm, *self.hf.heads)
        return {name: getattr(module, name) for name in names if hasattr(module, name)}

    def rotary_module(self, config: PretrainedConfig) -> Any:
        return getattr(self.module(), self.hf.rotary)(config=config)

    def config_variants(self) -> list[PretrainedConfig]:
        """Configs covering every tensor name this family's layers can have (checkpoint loading registers
        the union of their rules before it knows the config)."""
        return [self.hf.config_class()()]

    # --- what a config may hold ----------------------------------------------------------------------
    def problems(self, config: PretrainedConfig) -> list[str]:
        """Each config feature neither backend can express, by name (empty: the config can be swapped)."""
        found = []
        heads, groups = config.num_attention_heads, kv_groups_of(config)
        if heads % groups:
            found.append(f"{heads} attention heads do not split into {groups} key/value groups")
        activation = getattr(config, self.activation_field, None)
        if activation not in self.hf_activations:
            found.append(f"{self.activation_field}={activation!r} (the {self.name} layers implement "
                         f"{self.activation}, i.e. {' or '.join(self.hf_activations)})")
        if getattr(config, "pretraining_tp", 1) not in (1, None):
            found.append(f"pretraining_tp={config.pretraining_tp}")
        if getattr(config, "use_bidirectional_attention", False):
            found.append("use_bidirectional_attention=True (the swapped layers are causal decoder layers)")
        return found + self.family_problems(config)

    def family_problems(self, config: PretrainedConfig) -> list[str]:
        """What this family's configs may hold that TE cannot express."""
        return []

    def validate(self, config: PretrainedConfig) -> None:
        """Raise UnsupportedConfigError naming every config feature the swapped layers cannot express."""
        problems = self.problems(config)
        if problems:
            raise UnsupportedConfigError(f"cannot swap this {self.name} config: " + "; ".join(problems))

    # --- TE's layer -------------------------------------------------------------------------------
    def te_layer_kwargs(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        """TransformerLayer's arguments for one layer (TE's names), shared by both backends."""
        return {
            "hidden_size": config.hidden_size,
            "ffn_hidden_size": config.intermediate_size,
            "num_attention_heads": config.num_attention_heads,
            "num_gqa_groups": kv_groups_of(config),
            "kv_channels": head_dim_of(config),  # head_dim may differ from hidden/heads (Gemma, Qwen3)
            "layernorm_epsilon": config.rms_norm_eps,
            "layer_number": layer_idx + 1,  # TE keys its KV cache by layer_number
            "attention_dropout": float(getattr(config, "attention_dropout", 0.0) or 0.0),
            "hidden_dropout": 0.0,
            "normalization": "RMSNorm",
            "activation": self.activation,
            "bias": False,
            "zero_centered_gamma": False,
            "window_size": None,
            # Fresh weights as HF initialises its linears (TE's own default std is 0.023).
            "init_method": normal_init(config.initializer_range),
            "output_layer_init_method": normal_init(config.initializer_range),
            **self.layer_extras(config, layer_idx),
        }

    def layer_extras(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        """TE arguments where this family differs from Llama."""
        return {}

    def te_versions(self, config: PretrainedConfig) -> tuple[tuple[tuple[int, int], str], ...]:
        """(minimum TE release, the feature that needs it) for this config's layers."""
        return ()

    def layer_plan(self, config: PretrainedConfig, layer_idx: int) -> LayerPlan:
        """The plan both backends build layer `layer_idx` from."""
        self.validate(config)
        return LayerPlan(family=self.name, layout=self.layout, te_kwargs=self.te_layer_kwargs(config, layer_idx),
                         rotary_factory=self.rotary_module, te_versions=self.te_versions(config),
                         frozen_zero=self.frozen_zero(config), **self.rope_of_layer(config, layer_idx))

    def rope_of_layer(self, config: PretrainedConfig, layer_idx: int) -> dict[str, Any]:
        """Which of the rotary module's tables this layer reads, and its softmax scale if not 1/sqrt(d)."""
        return {}

    def frozen_zero(self, config: PretrainedConfig) -> tuple[str, ...]:
        """TE parameters of a layer that HF lacks, held at zero (biases of TE's all-or-nothing bias=True)."""
        return ()

    # --- trained weights in this family's shape ------------------------------------------------------
    def from_llama(self, config: PretrainedConfig, state: dict[str, Any]) -> tuple[PretrainedConfig, dict[str, Any]]:
        """A trained Llama's config and weights housed in this family's layout (teswap.swap.checkpoints
        re-houses SmolLM2-135M so), where the architecture allows; refused where it does not."""
        raise UnsupportedConfigError(f"trained Llama weights cannot be housed in the {self.name} layout")

    # --- the mapping --------------------------------------------------------------------------------
    def layer_rules_at(self, config: PretrainedConfig, layer_idx: int, *, fuse_qkv: bool) -> list[Rule]:
        """The rules of decoder layer `layer_idx` (a family whose layers differ, e.g. dense layers among
        MoE ones, reads the index from the config view; `layer_rules(config)` is then every layer's union)."""
        return self.layer_rules(at_layer(config, layer_idx), fuse_qkv=fuse_qkv)

    def layer_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        """HF <-> TE rules for one decoder layer's tensors (split or fused QKV in TE)."""
        return [*self.norm_rules(config), *self.attention_rules(config, fuse_qkv=fuse_qkv),
                *self.mlp_rules(config), *(rules.te_only_zero(name) for name in self.frozen_zero(config))]

    def norm_rules(self, config: PretrainedConfig) -> list[Rule]:
        return [rules.rename("input_layernorm.weight", "self_attention.layernorm_qkv.layer_norm_weight"),
                rules.rename("post_attention_layernorm.weight", "layernorm_mlp.layer_norm_weight")]

    def attention_rules(self, config: PretrainedConfig, *, fuse_qkv: bool) -> list[Rule]:
        return [*self.qkv_rules(config, "weight", fuse_qkv=fuse_qkv),
                rules.rename("self_attn.o_proj.weight", "self_attention.proj.weight")]

    def qkv_rules(self, config: PretrainedConfig, kind: str, *, fuse_qkv: bool) -> list[Rule]:
        """q_proj/k_proj/v_proj `kind` ("weight" or "bias") to TE's split or group-interleaved fused QKV."""
        hf = tuple(f"self_attn.{p}_proj.{kind}" for p in "qkv")
        if fuse_qkv:
            return [rules.fuse_qkv(hf, f"self_attention.layernorm_qkv.{kind}", heads=config.num_attention_heads,
                                   groups=kv_groups_of(config), head_dim=head_dim_of(config))]
        split = (f"self_attention.layernorm_qkv.{name}_{kind}" for name in ("query", "key", "value"))
        return [rules.rename(h, t) for h, t in zip(hf, split, strict=True)]

    def mlp_rules(self, config: PretrainedConfig) -> list[Rule]:
        # fc1 = [gate; up]: TE applies the activation to the FIRST half
        return [rules.concat_rows(("mlp.gate_proj.weight", "mlp.up_proj.weight"), "layernorm_mlp.fc1_weight"),
                rules.rename("mlp.down_proj.weight", "layernorm_mlp.fc2_weight")]
