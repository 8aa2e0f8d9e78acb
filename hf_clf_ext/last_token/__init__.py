"""The embedding-based approach: a linear head on the last real token's hidden state of a decoder-only LM.

    configuration_last_token.py  LastTokenClassifierConfig                      } self-contained: copied next to the
    modeling_last_token.py       LastTokenClassifierForSequenceClassification   } weights (trust_remote_code)
    config.py                    LastTokenConfig: training arguments (TrainingArguments + data, LoRA, loss, calibrate)
    trainer.py                   LastTokenTrainer (transformers.Trainer)
    adapters.py                  the (Q)LoRA wrapping, the default LoRA config, finding the classifier in wrappers
    head_init.py                 a head started from the LM's output embeddings of the label names
    losses.py                    focal loss, balanced class weights
    inference.py                 classify_texts: length-sorted batches, labels and probabilities
    compiled.py                  classify_texts(compile=True): torch.compile over bucketed shapes
    pipeline.py                  pipeline("text-classification") defaults for the model
"""
