"""benchmarks/gpu.py, the one-run GPU benchmark, at tiny size on the CPU: every section runs and reports numbers, so
that the run on the GPU machine (which has no TRL, datasets or evaluate) cannot fail on a typo, a missing import or a
wrong path."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
BLOCKED = ("trl", "datasets", "evaluate")  # absent on the GPU machine: `import trl` must not be needed
SPECS = {(8, 1, True, "adamw_8bit"), (8, 1, False, "adamw_8bit"), (8, 1, True, "paged_adamw_32bit"),
         (2, 4, True, "adamw_8bit")}  # the tiny run's grid: every code path of the full one
CHECKS = {"head_float32_under_nf4", "adapter_round_trip_nf4", "padding_invariance_nf4",
          "adapter_head_layout_round_trip_tiny", "padding_invariance_bf16"}


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_gpu_script_runs_every_section_at_tiny_size_on_cpu(tmp_path):
    out = tmp_path / "out"
    # A missing package is what `sys.modules[name] = None` simulates: `import trl` fails and find_spec says absent.
    launcher = (f"import runpy, sys; sys.modules.update(dict.fromkeys({BLOCKED!r})); "
                f"sys.argv = [{str(SCRIPT)!r}, '--tiny', '--device', 'cpu', '--output', {str(out)!r}]; "
                f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.setdefault("OMP_NUM_THREADS", "1")
    done = subprocess.run([sys.executable, "-c", launcher], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    data = json.loads((out / "gpu.json").read_text())
    report = (out / "gpu.md").read_text()
    sections = data["sections"]

    assert data["modules"]["forbidden_imported"] == []
    assert data["modules"]["forbidden_importable"] == [], "the launcher's block did not take"
    assert data["meta"]["device"] == "cpu" and data["meta"]["tiny"]
    assert any("float32 compute" in note for note in data["meta"]["notes"])
    for key, section in sections.items():
        assert section["status"] == "ok", (key, section.get("errors"))
        assert "errors" not in section, (key, section["errors"])
        assert section["title"] in report

    for key in ("training_nf4", "training_bf16"):
        runs = sections[key]["runs"]
        settings = {(r["micro_batch"], r["accumulation"], r["gradient_checkpointing"], r["optimizer"]) for r in runs}
        assert settings == SPECS
        assert sorted(r["model"] for r in runs) == ["ours"] * 4 + ["stock"] * 4
        for run in runs:
            assert run["status"] == "ok", run
            assert _positive(run["seconds_per_step"]) and all(_positive(s) for s in run["step_seconds"]), run
            assert len(run["step_seconds"]) == data["meta"]["warmup"] + data["meta"]["steps"]
            assert _positive(run["peak_gib"]) and run["trainable_parameters"] > 0 and run["losses_finite"], run
            assert run["optimizer_state_mib"] > 0, run
        assert len(sections[key]["ratios"]) == 4
        assert all(_positive(r["time_ours_over_stock"]) for r in sections[key]["ratios"])
    assert "NF4" in sections["training_nf4"]["precision"]

    inference = sections["inference_bf16"]
    assert set(inference["subjects"]) == {"classify_texts", "backbone_forward", "predict_texts_compiled"}
    assert all(_positive(entry["examples_per_second"]) for entry in inference["subjects"].values())
    compiled = inference["subjects"]["predict_texts_compiled"]
    assert inference["compile_backend"] == "eager" and compiled["max_probability_difference_vs_eager"] < 1e-4
    assert _positive(compiled["first_pass_seconds_with_compilation"])
    assert all(_positive(value) for value in inference["ratios"].values())

    correctness = sections["correctness"]
    assert set(correctness["checks"]) == CHECKS
    assert correctness["all_passed"], correctness["checks"]
    head = correctness["checks"]["head_float32_under_nf4"]
    assert head["head_dtype_after_from_backbone"] == "torch.float32" and head["quant_type"] == "nf4"
    assert correctness["checks"]["adapter_round_trip_nf4"]["identical"]
    assert "All passed: **True**" in report

    instruction = sections["instruction"]
    assert set(instruction["seconds_per_example"]) == {"head", "score", "generate"}
    assert all(_positive(value) for value in instruction["seconds_per_example"].values())
    assert instruction["answers_valid"] and instruction["score_rows_sum_to_one"]

    environment = sections["environment"]
    assert environment["torch"] and environment["transformers"] and environment["bitsandbytes"]
    assert environment["gpu"].startswith("skipped on cpu:") and environment["nvidia_smi"].startswith("skipped on cpu:")
