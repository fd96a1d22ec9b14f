"""WebUI glue: every `modules.*` import of LoRA Bridge lives in this package."""
