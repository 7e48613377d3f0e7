"""Config code shared by every config file: `common` (every field and its default), `models` (the
preset names of google-research/vision_transformer), `default` (the offline demo). Runnable config
files live in the top-level `configs/` folder and import from here."""
