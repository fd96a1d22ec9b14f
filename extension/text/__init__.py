"""Text LoRA training on GGUF (the families of ``families.py``), legacy GGML and HF bases, exported for llama.cpp.

Modules: ``quant`` (packed frozen weights), ``families`` (one row per architecture), ``blocks`` (the shared
torch blocks rows compose), ``gguf_model`` (torch model from GGUF/GGML/HF),
``ggml_legacy``/``ggml_upgrade`` (legacy .bin files), ``tokenizer`` (``tokenizer.ggml.*``),
``data`` (txt/jsonl), ``lora`` (LoRA layers), ``init_lora`` (layout from an init adapter), ``engine``
(``train_text``), ``base_gguf`` (the GGUF llama.cpp runs), ``llama_check``
(llama.cpp comparison), ``demo``. Heavy imports happen inside these modules, not here.
"""
