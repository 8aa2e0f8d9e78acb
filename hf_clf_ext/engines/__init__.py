"""Engines that run a saved classifier for `TextClassifier`: where its forward runs; the texts, the decisions from
probabilities (`labels.results_from_probabilities`) and the result format stay this package's.

- `"torch"` (the default): the model in this process (eager, or compiled with `compile=True`).
- `"vllm"`: the stock export of a last-token classifier served by vLLM offline, in vLLM's own virtualenv
  (`hf_clf_ext.engines.vllm_engine`): for large corpora on GPUs, where vLLM's scheduler keeps them busy.
- `"onnxruntime"`: an ONNX export (`hf-clf export --format onnx`, float32 or int8) in onnxruntime
  (`hf_clf_ext.engines.onnxruntime_engine`); the engine of such a folder unless told otherwise.

An engine has `name`, `labels`, `multi_label`, `thresholds`, `tokenizer`, `probabilities(texts, batch_size)` and
`close()`.
"""

import json
import os

ENGINES = ("torch", "vllm", "onnxruntime")


def check_engine(engine: str | None) -> str | None:
    """`engine` (None: the saved folder's own), or a ValueError naming the engines there are."""
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}: use {' or '.join(map(repr, ENGINES))}.")
    return engine


def parse_vllm_options(text: str | dict | None) -> dict:
    """`vllm_options` given as a JSON object on the command line or in a YAML config (or already a dict)."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        options = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"vllm_options must be a JSON object of vLLM LLM() arguments, e.g. "
                         f"'{{\"tensor_parallel_size\": 2}}'; {text!r} is not JSON ({error}).") from None
    if not isinstance(options, dict):
        raise ValueError(f"vllm_options must be a JSON object of vLLM LLM() arguments, not {text!r}.")
    return options


def check_engine_launch(engine: str | None) -> None:
    """Before anything loads: the vLLM engine runs in one process, and this one was launched among several
    (`WORLD_SIZE`, as `accelerate launch` / torchrun set it)."""
    from ..batch import check_engine_processes

    check_engine_processes(check_engine(engine) or "torch", int(os.environ.get("WORLD_SIZE", "1")))


def load_engine(name_or_path: str, approach: str, engine: str | None, *, hub: dict, load_kwargs: dict,
                vllm_python: str | None = None, vllm_options: dict | None = None):
    """The engine running `name_or_path` (whose `classifier.saved_approach` is `approach`) for `TextClassifier`."""
    if approach == "onnx":
        if engine not in (None, "onnxruntime"):
            raise ValueError(f"{name_or_path} is an ONNX export: it runs on onnxruntime (engine='onnxruntime', or "
                             "leave engine unset), not on " + engine + ".")
        if load_kwargs:
            raise ValueError(f"{name_or_path} is an ONNX export, loaded by onnxruntime: model loading options "
                             f"({', '.join(sorted(load_kwargs))}) do not apply.")
        from ..hub import local_folder
        from .onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(local_folder(name_or_path, hub))
    if engine == "onnxruntime":
        raise ValueError(f"engine='onnxruntime' runs ONNX exports, and {name_or_path} is a saved {approach} "
                         "classifier: export it first (hf-clf export --format onnx).")
    from .vllm_engine import VllmEngine

    return VllmEngine(name_or_path, approach, vllm_python=vllm_python, options=vllm_options, hub=hub,
                      load_kwargs=load_kwargs)
