"""Distil a trained classifier into a cheaper student: the teacher labels an unlabelled pool with probabilities
(batched, longest first, resumable), the student learns them, and is evaluated on the same test split.

    python recipes/distill.py --config recipes/configs/distill_smollm2_bbc_tfidf.yaml
    python recipes/distill.py --config recipes/configs/distill_smollm2_bbc_10_layers.yaml --seed 1
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/distill.py --config ...

Any key of the config can be overridden on the command line. Students: `student_type: tfidf` (TF-IDF + logistic
regression), `last_token` (a causal LM, optionally cut to `student_layers`; the teacher's own backbone is
self-training), `sequence_classification` (any AutoModelForSequenceClassification).
"""

from hf_clf_ext.scripts.distill import main

if __name__ == "__main__":
    main()
