"""Fine-tune a causal LM into a last-token classifier (the embedding-based approach).

    python recipes/train_last_token.py --config recipes/configs/smollm2_135m_bbc_last_token.yaml
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/train_last_token.py --config ...

Any key of the config can be overridden on the command line: `--learning_rate 1e-4 --output_dir outputs/run2`.
Everything that can fail before a model loads (unknown keys, missing keys, unreadable data, missing columns, an
output folder that already holds a model) fails first. Then: train -> evaluate (validation, test) -> save the model,
its card and `all_results.json` -> push to the Hub when `push_to_hub: true`.
"""

from hf_clf_ext.scripts.train_last_token import main

if __name__ == "__main__":
    main()
