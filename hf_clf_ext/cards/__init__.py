"""Model cards rendered from training facts (`model_card.py`) and their templates (`*.md` beside it)."""
