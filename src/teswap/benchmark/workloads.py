"""The measured workloads as callables: inference prefill, one training step, and decode.

- prefill: one forward over `batch` × `seq_len` tokens with no grad, keeping only the last position's
  logits (`logits_to_keep=1`), as generation's prefill does.
- train: forward with labels, backward, AdamW step and zero_grad(set_to_none=True), as TE's te_llama
  tutorial times a fine-tuning step. Weights stay in the model dtype (pure bf16 training on GPUs).
- decode: a prompt of `seq_len` tokens, then exactly `new_tokens` greedy tokens over the KV cache, each
  token timed (decode/steps.py; its cache and speed options: decode/setup.py).

The swapped model runs inside `swapped_autocast(precision, backend)` (FP8 recipes keep bf16 weights);
the stock model runs plain. Both are eval() for prefill and train() for training; dropout is 0 in both.
Prefill and train run with use_cache=False: a cache would add memory and copies a forward without
decoding does not need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from teswap.benchmark.decode.setup import prepare_decode
from teswap.benchmark.decode.steps import DecodeStep
from teswap.benchmark.timing import STEP_TIME, StepTimings, Timer
from teswap.precision.runtime import calibrate, swapped_autocast

WORKLOADS = ("prefill", "decode", "train")  # run order: inference before training changes the weights
TRAIN_LR = 1.41e-5  # TE's te_llama tutorial; small enough that timed steps do not disturb the weights much


def make_input_ids(vocab_size: int, batch: int, seq_len: int, *, seed: int, device: torch.device) -> torch.Tensor:
    """Uniform random token ids, reproducible from `seed` on any device."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=generator).to(device)


def autocast_for(backend: str, precision: str) -> Callable[[], ContextManager[None]]:
    """A factory of the context each forward runs in: the precision's autocast for swapped models."""
    if backend == "stock":
        return nullcontext
    return lambda: swapped_autocast(precision, backend)


@dataclass(kw_only=True)
class PreparedStep:
    """One workload step bound to a model and inputs; call it to run one step."""

    workload: str
    model: torch.nn.Module
    input_ids: torch.Tensor
    autocast: Callable[[], ContextManager[None]]
    optimizer: torch.optim.Optimizer | None = None
    _run: Callable[[], object] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._run = self._train if self.workload == "train" else self._prefill

    @property
    def tokens_per_step(self) -> int:
        return self.input_ids.numel()

    def __call__(self) -> object:
        return self._run()

    def timed(self, timer: Timer) -> StepTimings:
        """One step, timed: {STEP_TIME: seconds}. A workload that times phases inside its step (decode:
        time to first token, time per output token) returns them too, keyed by name (unit in the name),
        and the paired rounds give each its own ratio and CI."""
        return {STEP_TIME: timer.time(self)}

    def _prefill(self) -> object:
        with torch.no_grad(), self.autocast():
            return self.model(self.input_ids, logits_to_keep=1, use_cache=False).logits

    def _train(self) -> object:
        assert self.optimizer is not None
        with self.autocast():
            loss = self.model(self.input_ids, labels=self.input_ids, use_cache=False).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return None

    def resident_tensors(self) -> Iterator[torch.Tensor]:
        """What lives across steps: parameters (and any grads), buffers, optimizer state, inputs."""
        for parameter in self.model.parameters():
            yield parameter
            if parameter.grad is not None:
                yield parameter.grad
        yield from self.model.buffers()
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                yield from (value for value in state.values() if isinstance(value, torch.Tensor))
        yield self.input_ids


WorkloadStep = PreparedStep | DecodeStep  # what prepare_step returns: call it to run one step


def prepare_step(workload: str, model: torch.nn.Module, input_ids: torch.Tensor, *, backend: str,
                 precision: str, new_tokens: int = 0, options: str = "") -> WorkloadStep:
    """Bind `workload` to `model`; a DelayedScaling prefill (or decode) is calibrated first so its scales
    are not 1.0. Decode takes `new_tokens` and its speed `options` (decode/setup.py)."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {WORKLOADS}")
    autocast = autocast_for(backend, precision)
    if workload == "decode":
        return prepare_decode(model, input_ids, backend=backend, precision=precision, new_tokens=new_tokens,
                              options=options, autocast=autocast)
    if workload == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR)
        return PreparedStep(workload=workload, model=model, input_ids=input_ids, autocast=autocast,
                            optimizer=optimizer)
    model.eval()
    if backend != "stock":
        calibrate(model, input_ids, precision, lambda: swapped_autocast(precision, backend))
    return PreparedStep(workload=workload, model=model, input_ids=input_ids, autocast=autocast)


def drop_state(step: WorkloadStep) -> None:
    """Drop gradients, optimizer state and a decode cache (rebuilt by the next step), keeping the model's mode."""
    step.model.zero_grad(set_to_none=True)
    if step.optimizer is not None:
        step.optimizer.state.clear()
    if isinstance(step, DecodeStep):
        step.drop_state()


def release(step: WorkloadStep) -> None:
    """Drop gradients and optimizer state (and close a decode step) so the next cell starts from weights alone."""
    drop_state(step)
    if isinstance(step, DecodeStep):
        step.close()
    step.model.eval()
