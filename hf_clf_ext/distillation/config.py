"""Arguments of distillation (`hf-clf distill`, `recipes/distill.py`): a trained classifier labels an unlabelled pool
and a student learns its softened probabilities. The last-token training fields apply to a decoder student, but for
the loss: every student learns the distillation loss, so `loss`, `class_weights` and `label_smoothing_factor` are
refused. A `sequence_classification` student trains every weight at `learning_rate` (no LoRA, no head learning rate,
no quantization); a decoder student cut to `student_layers` loads in full precision."""

import os
from dataclasses import dataclass, field, fields

from ..engines import check_engine_launch, parse_vllm_options
from ..last_token.config import LastTokenConfig
from .teacher_labels import DEFAULT_MAX_CHARS

STUDENT_TYPES = ("last_token", "sequence_classification", "tfidf")
DEFAULT_TEACHER_LABELS = "teacher_labels.jsonl"  # in output_dir, unless teacher_labels_file names another file


@dataclass
class DistillationConfig(LastTokenConfig):
    r"""
    Arguments of distillation. The student's backbone is the script's `model_name_or_path` (unused by a TF-IDF
    student); the last-token fields (LoRA, learning rates, schedule, max_length, ...) train a decoder student.
    """

    # --- Teacher ----------------------------------------------------------------------------------------------------
    teacher: str | None = field(
        default=None, metadata={"help": "The teacher: a classifier saved by hf-clf-ext (either approach), folder or "
                                "Hub repo id."}
    )
    teacher_method: str | None = field(
        default=None, metadata={"help": "How the teacher gives probabilities; an instruction teacher: 'score' (label "
                                "scoring, the default and its only method with probabilities)."}
    )
    teacher_batch_size: int = field(default=16, metadata={"help": "Batch size of the teacher labelling the pool."})
    teacher_engine: str | None = field(
        default=None, metadata={"help": "Where the teacher labels (default: its own, onnxruntime for an ONNX export "
                                "and torch otherwise, in every process of the launch), or 'vllm' (a last-token "
                                "teacher's stock export served by vLLM, in one process; see hf_clf_ext.engines)."}
    )
    vllm_python: str | None = field(
        default=None, metadata={"help": "The python of vLLM's virtualenv, for teacher_engine 'vllm' (default: "
                                "$HF_CLF_EXT_VLLM_PYTHON)."}
    )
    vllm_options: str | None = field(
        default=None, metadata={"help": "A JSON object of vLLM LLM() arguments for teacher_engine 'vllm', e.g. "
                                "'{\"tensor_parallel_size\": 2}'."}
    )
    teacher_labels_file: str | None = field(
        default=None,
        metadata={"help": "JSONL file of the teacher's probabilities, written once labelling is done (its parts, "
                  "in <file>.parts/, as it goes: a stopped run resumes there) (default: "
                  "<output_dir>/teacher_labels.jsonl)."},
    )
    max_pool_chars: int = field(
        default=DEFAULT_MAX_CHARS, metadata={"help": "Pool texts longer than this many characters are an error."}
    )

    # --- Student ----------------------------------------------------------------------------------------------------
    student_type: str = field(
        default="last_token",
        metadata={"help": "'last_token' (a causal LM through our last-token classifier: a smaller checkpoint, the "
                  "teacher's backbone cut to `student_layers`, or the same model: self-training), "
                  "'sequence_classification' (any AutoModelForSequenceClassification, e.g. an encoder, fully "
                  "fine-tuned) or 'tfidf' (TF-IDF + logistic regression)."},
    )
    student_layers: int | None = field(
        default=None, metadata={"help": "Keep only the first k decoder layers of the student's backbone."}
    )

    # --- Loss -------------------------------------------------------------------------------------------------------
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Temperature T softening the teacher's distribution (and the student's logits "
                               "in the KL term, scaled by T^2 as in Hinton et al. 2015)."}
    )
    gold_weight: float = field(
        default=0.5,
        metadata={"help": "On rows with a gold label: loss = gold_weight * CE(gold) + (1 - gold_weight) * "
                  "KL(teacher). Pool rows have the KL term alone."},
    )
    include_gold: bool = field(default=True, metadata={"help": "Train the student on the gold rows too."})

    # --- TF-IDF student ---------------------------------------------------------------------------------------------
    tfidf_ngram_max: int = field(default=2, metadata={"help": "Word n-grams from 1 to this."})
    tfidf_C: float = field(default=10.0, metadata={"help": "Inverse L2 regularisation of the logistic regression."})
    tfidf_sublinear_tf: bool = field(default=True, metadata={"help": "1 + log(tf) instead of raw term counts."})
    tfidf_min_df: int = field(default=1, metadata={"help": "Ignore terms in fewer documents than this."})

    def __post_init__(self):
        if not self.teacher:
            raise ValueError("teacher is required: a classifier saved by hf-clf-ext (folder or Hub repo id).")
        if self.student_type not in STUDENT_TYPES:
            raise ValueError(f"student_type must be one of {STUDENT_TYPES}, got {self.student_type!r}.")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}.")
        if not 0 <= self.gold_weight <= 1:
            raise ValueError(f"gold_weight must lie in [0, 1], got {self.gold_weight}.")
        if self.student_layers is not None and self.student_layers < 1:
            raise ValueError(f"student_layers must be at least 1, got {self.student_layers}.")
        if self.student_layers is not None and self.student_type != "last_token":
            raise ValueError("student_layers applies to a 'last_token' student only.")
        if self.head_init != "random" and self.student_type != "last_token":
            raise ValueError(f"head_init={self.head_init!r} applies to a 'last_token' student only (a "
                             f"{self.student_type!r} student has no head built from an LM's output embeddings).")
        changed_loss = [name for name, value, plain in (("loss", self.loss, "cross_entropy"),
                                                         ("class_weights", self.class_weights, None),
                                                         ("label_smoothing_factor", self.label_smoothing_factor, 0.0))
                        if value != plain]
        if changed_loss:
            raise ValueError(f"{', '.join(changed_loss)} cannot take effect on a student: it learns the "
                             "distillation loss (KL to the teacher at distill_temperature, plus gold_weight x "
                             "cross-entropy on gold rows). Leave them at their defaults.")
        if self.quantization != "none" and (self.student_type != "last_token" or self.student_layers is not None):
            where = "a decoder cut to student_layers (built in full precision from the checkpoint's first layers)" \
                if self.student_type == "last_token" else f"a {self.student_type!r} student"
            raise ValueError(f"quantization={self.quantization!r} cannot take effect on {where}: set it to 'none'.")
        from ..jobs import resume_asked

        if self.student_type == "tfidf" and resume_asked(self.resume_from_checkpoint):
            raise ValueError("resume_from_checkpoint: a 'tfidf' student is fitted in one step and leaves no "
                             "checkpoint to resume.")
        check_engine_launch(self.teacher_engine)
        parse_vllm_options(self.vllm_options)
        if self.teacher_engine != "vllm" and (self.vllm_python or self.vllm_options):
            raise ValueError("vllm_python / vllm_options apply to teacher_engine 'vllm' only.")
        if self.max_pool_chars < 1:
            raise ValueError(f"max_pool_chars must be positive, got {self.max_pool_chars}.")
        for name in ("teacher_batch_size", "tfidf_ngram_max", "tfidf_min_df"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.tfidf_C <= 0:
            raise ValueError(f"tfidf_C must be positive, got {self.tfidf_C}.")
        if self.output_dir and _same_path(self.output_dir, self.teacher):
            raise ValueError(f"output_dir {self.output_dir} is the teacher's folder: the student would be saved over "
                             "its teacher. Choose another output_dir.")
        if self.teacher_labels_file and os.path.isdir(self.teacher_labels_file):
            raise ValueError(f"teacher_labels_file {self.teacher_labels_file} is a folder: name a file in it, e.g. "
                             f"{os.path.join(self.teacher_labels_file, 'teacher_labels.jsonl')}.")
        super().__post_init__()  # finite numbers first
        if self.student_type != "tfidf":
            tfidf = [f.name for f in fields(self)
                     if f.name.startswith("tfidf_") and getattr(self, f.name) != f.default]
            if tfidf:
                raise ValueError(f"{', '.join(tfidf)} apply to a 'tfidf' student only, not to a {self.student_type!r} "
                                 "student.")

    @property
    def teacher_labels_path(self) -> str:
        """Where the teacher's probabilities are written and resumed from: `teacher_labels_file`, or
        `<output_dir>/teacher_labels.jsonl`."""
        return self.teacher_labels_file or os.path.join(self.output_dir, DEFAULT_TEACHER_LABELS)


def _same_path(a: str, b: str) -> bool:
    """Whether two paths name one folder (the teacher may be a Hub repo id: never a folder it names)."""
    if not os.path.isdir(b):
        return False
    return (os.path.isdir(a) and os.path.samefile(a, b)) or os.path.realpath(a) == os.path.realpath(b)
