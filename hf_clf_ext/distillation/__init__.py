"""Distillation: a trained classifier (either approach) labels an unlabelled pool; a cheaper student learns it.

    config.py          DistillationConfig (last-token arguments + teacher, student, loss)
    teacher_labels.py  label_pool: the teacher's probabilities for a pool, resumable JSONL, fingerprinted by content
    tfidf.py           TfidfClassifier: soft-target TF-IDF + logistic regression, JSON + safetensors
    trainer.py         the distillation loss, the students (last-token, any AutoModel, TF-IDF) and the run
"""
