"""The core: models, data, freeze plans, lints and training in plain torch. Never imports Textual."""
