"""The screening engine: discover files, decode with DALI, classify in batches, write one row per file."""
