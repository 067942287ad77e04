"""Mixture-of-experts families (Mixtral, Qwen3-MoE with a dense layer among MoE ones) on the twin: the
composite's tree, fp32 parity with stock in both expert implementations (logits, routing, aux loss,
router logits per MoE layer, greedy generation), checkpoints in HF's older per-expert layout loaded and
saved through the TE mapping, FP8 per expert, and each MoE fault caught.

HF's own behaviours (generate, padding, hidden states, save/load, compile, ...) run for both families
in tests/test_hf_behaviours.py; verdicts at bf16 and FP8 in tests/test_family_parity.py.
"""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors import safe_open

from support import random_ids, rel_max_err
from teswap import FAMILIES, build_pair, decoder_class, replace_decoder
from teswap.families.moe import EXPERTS_FIELD
from teswap.layers.rope import bind_rope
from teswap.layers.torch_moe import DenseMLP, GroupedExperts, moe_permute, moe_unpermute
from teswap.parity.mutations import mutation
from teswap.parity.routing import routing_report
from teswap.precision.emulation import fp8_autocast
from teswap.precision.recipes import Float8CurrentScaling

PRESETS = {"mixtral": "tiny-mixtral", "qwen3_moe": "tiny-qwen3-moe"}
CASES = [(family, experts) for family in PRESETS for experts in ("grouped", "hf")]
_PAIRS: dict[tuple[str, str], object] = {}


def pair_of(family: str, experts: str = "grouped"):
    if (family, experts) not in _PAIRS:
        _PAIRS[family, experts] = build_pair(PRESETS[family], seed=1, experts=experts)
    return _PAIRS[family, experts]


@pytest.mark.parametrize("family, experts", CASES, ids=[f"{f}-{e}" for f, e in CASES])
def test_fp32_parity_logits_routing_aux_loss_and_greedy(family, experts):
    pair = pair_of(family, experts)
    assert pair.experts == experts and getattr(pair.swapped.config, EXPERTS_FIELD) == experts  # recorded
    ids = random_ids(pair.config.vocab_size, batch=2, seq=24)
    with torch.no_grad():
        ours = pair.swapped(ids, output_router_logits=True)
        theirs = pair.stock(ids, output_router_logits=True)
    assert rel_max_err(ours.logits, theirs.logits) <= 1e-5
    moe_layers = FAMILIES[family].moe_layers(pair.config)
    assert len(ours.router_logits) == len(theirs.router_logits) == len(moe_layers) > 0
    for mine, reference in zip(ours.router_logits, theirs.router_logits, strict=True):
        assert mine.shape == reference.shape and rel_max_err(mine, reference) <= 1e-5
    assert abs(float(ours.aux_loss) - float(theirs.aux_loss)) <= 1e-6
    report = routing_report(pair.stock, pair.swapped, ids)
    assert report.agreement == 1.0 and report.flips == 0
    assert report.tokens_per_expert_swapped == report.tokens_per_expert_stock
    prompt = random_ids(pair.config.vocab_size, batch=2, seq=6)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(pair.swapped.generate(prompt, **kwargs), pair.stock.generate(prompt, **kwargs))


def test_the_composite_tree_and_a_dense_layer_among_moe_ones():
    pair = pair_of("qwen3_moe")
    layers = pair.swapped.model.layers
    assert type(layers[0]).__name__ == "TorchQwen3MoeDecoderMoEComposite"
    assert isinstance(layers[0].mlp, DenseMLP) and layers[0].layer_plan_used.moe is None  # mlp_only_layers=[0]
    assert isinstance(layers[1].mlp, GroupedExperts) and layers[1].layer_plan_used.moe.num_experts == 8
    names = {name for name, _ in layers[1].named_parameters()}
    assert {"post_attention_layernorm.weight", "mlp.router.weight", "mlp.experts_fc1.weight7",
            "mlp.experts_fc2.weight0", "self_attention.q_norm.weight"} <= names
    hf = pair_of("mixtral", "hf").swapped.model.layers[0]
    assert type(hf).__name__ == "TorchMixtralDecoderMoECompositeHFExperts"
    assert type(hf.mlp).__name__ == "MixtralSparseMoeBlock"  # HF's own block, as it is


def test_permute_and_unpermute_are_te_s_index_map():
    tokens = torch.randn(5, 3)
    indices = torch.tensor([[2, 0], [1, 2], [0, 1], [2, 1], [0, 2]])
    rows, row_map = moe_permute(tokens, indices)
    experts = indices.reshape(-1)[row_map]
    assert torch.equal(experts, experts.sort().values)  # grouped by expert
    probs = torch.rand(5, 2)
    out = moe_unpermute(rows * 2, row_map, probs)
    assert torch.allclose(out, 2 * tokens * probs.sum(-1, keepdim=True))


@pytest.mark.parametrize("experts", ["grouped", "hf"])
def test_an_older_per_expert_checkpoint_loads_and_saves_through_the_mapping(tmp_path, experts):
    """Stock saves Mixtral as block_sparse_moe.experts.N.w1/w2/w3 (HF's reverse conversion); under the swap
    transformers' conversion and ours compose into one, loading and saving."""
    pair = pair_of("mixtral", experts)
    pair.stock.save_pretrained(tmp_path / "stock")
    keys = safe_open(glob.glob(str(tmp_path / "stock" / "*.safetensors"))[0], "pt").keys()
    assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in keys
    cls = FAMILIES["mixtral"].causal_lm_class()
    with replace_decoder(decoder_class("mixtral", experts=experts)):
        loaded = cls.from_pretrained(tmp_path / "stock").eval()
        loaded.save_pretrained(tmp_path / "again")  # inside the swap: a stock checkpoint
    bind_rope(loaded)
    back = cls.from_pretrained(tmp_path / "again").eval()
    ids = random_ids(pair.config.vocab_size, batch=2, seq=10)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, pair.swapped(ids).logits)
        assert torch.equal(back(ids).logits, pair.stock(ids).logits)


def test_fp8_keeps_one_scale_per_expert():
    pair = pair_of("mixtral")
    ids = random_ids(pair.config.vocab_size, batch=2, seq=16)
    with torch.no_grad(), fp8_autocast(Float8CurrentScaling()):
        pair.swapped(ids)
    fc1 = pair.swapped.model.layers[0].mlp.experts_fc1
    states = [gemm.fp8_scaling for gemm in fc1.gemms if gemm.fp8_scaling is not None]
    assert len(states) >= 2 and len({id(state) for state in states}) == len(states)
    assert pair.swapped.model.layers[0].mlp.router.weight.dtype == torch.float32


# Each MoE fault, on the config it applies to: fp32 parity with stock must break (logits or routing).
FAULTS = [("mixtral", "renormalisation-skipped"), ("mixtral", "experts-exchanged"), ("mixtral", "router-bf16"),
          ("qwen3_moe", "experts-exchanged"), ("qwen3_moe", "router-bf16"), ("qwen3_moe", "norm-topk-prob-ignored")]


@pytest.mark.parametrize("family, fault", FAULTS, ids=[f"{f}-{m}" for f, m in FAULTS])
def test_each_moe_fault_breaks_fp32_parity(family, fault):
    config = pair_of(family).config
    with mutation(fault, config):
        pair = build_pair(PRESETS[family], seed=1)
        ids = random_ids(config.vocab_size, batch=2, seq=24)
        with torch.no_grad():
            error = rel_max_err(pair.swapped(ids).logits, pair.stock(ids).logits)
    assert error > 1e-4, f"{fault}: logits still within {error:.2e} of stock"


def test_moe_faults_are_refused_where_there_is_nothing_to_break():
    from teswap.errors import TeswapError

    with pytest.raises(TeswapError, match="nothing to break"):
        mutation("norm-topk-prob-ignored", pair_of("mixtral").config)
    with pytest.raises(TeswapError, match="nothing to break"):
        mutation("renormalisation-skipped", pair_of("qwen3_moe").config)  # norm_topk_prob=False


def test_refusals_name_the_feature():
    from teswap.errors import UnsupportedConfigError
    from teswap.swap.presets import PRESETS as ALL

    config = ALL["tiny-mixtral"]()
    config.router_jitter_noise = 0.1
    with pytest.raises(UnsupportedConfigError, match="router_jitter_noise"):
        build_pair(config)
    with pytest.raises(UnsupportedConfigError, match="no mixture-of-experts"):
        decoder_class("llama", experts="grouped")
    for family in PRESETS:  # a dense Llama's weights are no experts: not housed as Mistral's or Qwen3's would be
        with pytest.raises(UnsupportedConfigError, match="cannot be housed"):
            FAMILIES[family].from_llama(ALL["tiny"](), {})


def test_shapes_count_every_expert_and_a_token_s_top_k():
    from teswap.benchmark.memory_estimate import GIB, estimate_cell, fits
    from teswap.benchmark.mfu import ModelShape
    from teswap.benchmark.plan import Cell
    from teswap.hardware.free_memory import FreeMemory
    from teswap.swap.presets import PRESETS as ALL

    pair = pair_of("mixtral")
    assert ModelShape.from_config(pair.config).params == sum(p.numel() for p in pair.stock.parameters())
    big = ModelShape.from_config(ALL["mixtral-8x7b"]())
    assert 46.5e9 < big.params < 46.9e9 and 12.5e9 < big.matmul_params < 13e9  # 46.7B, 12.9B active
    qwen = ModelShape.from_config(ALL["qwen3-30b-a3b"]())
    assert 30e9 < qwen.params < 31e9 and qwen.moe_layers == 48
    tiny = ModelShape.from_config(pair_of("qwen3_moe").config)
    assert (tiny.moe_layers, tiny.dense_layers) == (2, 1)
    cell = Cell(model="mixtral-8x7b", workload="prefill", backend="torch", precision="bf16", seq_len=128, batch=1,
                device="cpu")
    estimate = estimate_cell(cell, big)
    assert estimate.weights_bytes > 80 * GIB and not fits(estimate.total_bytes, FreeMemory(24 * GIB, "test"))


def test_the_te_mixtral_ladder_names_its_rungs_and_skips_what_cannot_run():
    from teswap.benchmark.moe_ladder import format_ladder, run_ladder
    from teswap.benchmark.timing import TimingPolicy

    policy = TimingPolicy(warmup=1, min_samples=2, max_samples=4, budget_s=0.5, min_rounds=2)
    rows = run_ladder("tiny-mixtral", workload="prefill", seq_len=16, batch=1,
                      rungs=("hf", "grouped-experts", "mxfp8"), policy=policy)
    assert [row["rung"] for row in rows] == ["hf", "grouped-experts", "mxfp8"]
    assert rows[1]["status"] == "ok" and rows[1]["speedup"] > 0 and rows[1]["load_balance"] >= 1.0
    assert rows[1]["backend"] == "torch" and rows[0]["backend"] == "stock"
    assert rows[2]["status"] == "ok"  # mxfp8 is emulated on the torch twin since the block-scaled recipes landed
    assert "grouped-experts" in format_ladder(rows)
