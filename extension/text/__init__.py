"""Text LoRA training on GGUF, legacy GGML and HF LLaMA-family bases, exported for llama.cpp.

Modules: ``quant`` (packed frozen weights), ``gguf_model`` (torch model from GGUF/GGML/HF),
``ggml_legacy``/``ggml_upgrade`` (legacy .bin files), ``tokenizer`` (``tokenizer.ggml.*``),
``data`` (txt/jsonl), ``lora`` (LoRA layers), ``init_lora`` (layout from an init adapter), ``engine``
(``train_text``), ``base_gguf`` (the GGUF llama.cpp runs), ``llama_check``
(llama.cpp comparison), ``demo``. Heavy imports happen inside these modules, not here.
"""
