"""Stand-ins for the TE calls of the decode speed options, on top of te_standin; they are not TE.

`make_graphed_callables`, `quantized_model_init` and `fp8_model_init` with TE's signatures recorded as
data from NVIDIA/TransformerEngine: transformer_engine/pytorch/graph.py and quantization.py at
2.20.0.dev0 (commit d0067d0), and graph.py / fp8.py at v2.8 (the FP8 argument names before TE 2.9
renamed them; quantized_model_init does not exist there).

make_graphed_callables checks our call against the recorded signature and against TE's own checks
that bite here (graph.py: each callable an nn.Module, all in training or all in eval, no hooks
registered, sample args only tensors), runs the warm-up iterations as TE does (they really run the
module, with whatever it mutates), and returns a callable that runs the module eagerly, inside the
stand-in autocast when FP8 is enabled: what a replay would compute, with no graph. quantized_model_init
and fp8_model_init record their arguments; the weights they leave are ordinary high-precision tensors.
Passing here says our glue calls TE as TE's source declares it; no number from it is a TE number.
"""

from __future__ import annotations

import contextlib
import functools

import torch

import te_standin

MAKE_GRAPHED_CALLABLES_PARAMS = {
    "2.20": ("modules", "sample_args", "num_warmup_iters", "allow_unused_input", "sample_kwargs", "fp8_enabled",
             "fp8_calibrating", "fp8_recipe", "fp8_group", "fp8_weight_caching", "enabled", "calibrating", "recipe",
             "amax_reduction_group", "cache_quantized_params", "_order", "_num_layers_per_chunk", "pool",
             "retain_graph_in_backward", "_reuse_graph_input_output_buffers", "clone_param_grads_on_return",
             "pre_warmup_hook", "post_warmup_hook", "capture_time_hooks"),
    "2.8": ("modules", "sample_args", "num_warmup_iters", "allow_unused_input", "sample_kwargs", "fp8_enabled",
            "fp8_calibrating", "fp8_recipe", "fp8_group", "fp8_weight_caching", "_order", "_num_layers_per_chunk",
            "pool", "retain_graph_in_backward", "_reuse_graph_input_output_buffers"),
}
MODEL_INIT_PARAMS = ("enabled", "recipe", "preserve_high_precision_init_val")  # both names, 2.2 .. 2.20
GRAPH_CALLS: list[dict] = []
INIT_CALLS: list[tuple[str, dict]] = []


def _signature(version: str, pytorch):
    """A function whose signature is TE's (so inspect.signature sees TE's names), forwarding to the check."""
    names = MAKE_GRAPHED_CALLABLES_PARAMS[version]
    fp8_new = "enabled" in names
    defaults = ", ".join(f"{name}=None" for name in names[2:])
    source = f"def make_graphed_callables(modules, sample_args, {defaults}):\n    return _impl(**locals())\n"
    namespace = {"_impl": functools.partial(_make_graphed_callables, fp8_new=fp8_new, pytorch=pytorch)}
    exec(source, namespace)  # noqa: S102 - builds TE's recorded signature, nothing else
    return namespace["make_graphed_callables"]


def _make_graphed_callables(*, fp8_new: bool, pytorch, modules, sample_args, **kwargs):
    given = {k: v for k, v in kwargs.items() if v is not None}
    GRAPH_CALLS.append({"module": modules, "sample_args": sample_args, **given})
    assert isinstance(modules, torch.nn.Module), f"Graphing for {type(modules)} is not supported."
    assert not modules.training, "the stand-in checks inference graphs only"
    assert not (modules._forward_hooks or modules._forward_pre_hooks), "Modules must not have hooks registered"
    assert all(isinstance(arg, torch.Tensor) for arg in sample_args), "sample_args must contain only Tensors"
    enabled = given.get("enabled" if fp8_new else "fp8_enabled", False)
    recipe = given.get("recipe" if fp8_new else "fp8_recipe")

    def run(*args):  # TE enters its own autocast around the graphed module: this generation's entry point
        if not enabled:
            context = contextlib.nullcontext()
        elif fp8_new:
            context = pytorch.autocast(enabled=True, recipe=recipe, _graph=True)
        else:
            context = pytorch.fp8_autocast(enabled=True, fp8_recipe=recipe, _graph=True)
        with context:
            return modules(*args)

    for _ in range(given.get("num_warmup_iters", 3)):
        run(*sample_args)
    return run


def _model_init(name: str):
    @contextlib.contextmanager
    def init(**kwargs):
        unknown = sorted(set(kwargs) - set(MODEL_INIT_PARAMS))
        if unknown:
            raise TypeError(f"{name}() got unexpected keyword arguments {unknown}")
        INIT_CALLS.append((name, kwargs))
        yield

    return init


# The te_standin generation whose autocast and checks a graph version sits with: TE 2.8 still has only
# fp8_autocast(fp8_recipe=) and FP8GlobalStateManager's checks, as the recorded 2.5 generation.
GENERATION_OF = {"2.20": "2.20", "2.8": "2.5"}


def install(monkeypatch, version: str = "2.20"):
    """te_standin (the matching generation) plus make_graphed_callables and the model-init context of TE
    `version` ("2.20" or "2.8")."""
    pytorch = te_standin.install(monkeypatch, GENERATION_OF[version])
    pytorch.make_graphed_callables = _signature(version, pytorch)
    pytorch.fp8_model_init = _model_init("fp8_model_init")
    if version != "2.8":
        pytorch.quantized_model_init = _model_init("quantized_model_init")
    GRAPH_CALLS.clear()
    INIT_CALLS.clear()
    return pytorch
