"""Cases that share a pair share the reference's runs, and get exactly the figures they get alone."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from teswap.parity.case import ParityCase, ReferenceCache, run_parity_case
from teswap.swap.pair import build_pair

CASE = ParityCase(source="tiny", precision="bf16", seq_len=32, batch=2, batches=2, gen_prompts=16, gen_tokens=4)


@pytest.fixture(scope="module")
def bf16_pair():
    return build_pair("tiny", seed=0, backend="torch", dtype=torch.bfloat16, device="cpu")


def _figures(report):
    return report.swapped, report.stock, report.perplexity, report.generation, report.swapped_layer_errors


def _count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_second_case_on_the_same_pair_reuses_the_reference_and_gets_the_same_figures(bf16_pair):
    alone = run_parity_case(replace(CASE, precision="fp8-current"), pair=bf16_pair)
    references = ReferenceCache()
    run_parity_case(CASE, pair=bf16_pair, references=references)
    runs = references.runs
    assert runs is not None
    calls = _count_forwards(runs.model)
    shared = run_parity_case(replace(CASE, precision="fp8-current"), pair=bf16_pair, references=references)
    assert references.runs is runs and calls[0] == 0  # no reference forward, backward or generation again
    assert _figures(shared) == _figures(alone)


def test_a_case_with_other_inputs_or_another_pair_gets_a_new_reference(bf16_pair):
    references = ReferenceCache()
    run_parity_case(CASE, pair=bf16_pair, references=references)
    first = references.runs
    run_parity_case(replace(CASE, seq_len=16), pair=bf16_pair, references=references)
    assert references.runs is not first and references.runs.inputs.batches[0].shape == (2, 16)
    second = references.runs
    other = build_pair("tiny", seed=0, backend="torch", dtype=torch.bfloat16, device="cpu")
    run_parity_case(replace(CASE, seq_len=16), pair=other, references=references)
    assert references.runs is not second and references.runs.pair is other


def test_the_reference_runs_its_first_batch_once_in_an_fp8_case(bf16_pair):
    """The FP8 case looks at the first batch again with FP8 off; the reference's part of that is reused."""
    references = ReferenceCache()
    case = replace(CASE, precision="fp8-delayed", gen_tokens=0, grads=False)
    runs = references.runs_for(bf16_pair, torch.float32, case)
    calls = _count_forwards(runs.model)
    run_parity_case(case, pair=bf16_pair, references=references)
    assert calls[0] == case.batches
